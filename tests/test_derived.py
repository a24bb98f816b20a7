"""Derived datasets: built from a source folder, chained, validated; the data stage builds them in order."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from pipeline.config import ConfigError
from pipeline.corruption import corrupt_features, parse_corruption
from pipeline.dataset import inter_path, load_mmrec
from pipeline.derived import build_derived, build_order, lineage, source_chain, validate_derived_spec
from pipeline.stages import data as data_stage

IMG50 = {"source": "derived", "from": "tiny", "seed": 1, "corrupt": {"image": {"noise": 1.0, "fraction": 0.5}}}
TXT30 = {"source": "derived", "from": "img50", "seed": 2,
         "corrupt": {"text": {"replace": "mean", "replace_fraction": 0.3}}}
REGISTRY = {"tiny": {"source": "synthetic"}, "img50": IMG50, "img50_txt30": TXT30}


@pytest.fixture
def root(tmp_path, tiny_dir):
    shutil.copytree(tiny_dir, tmp_path / "tiny")
    return tmp_path


def test_derived_folder_keeps_the_interactions_and_corrupts_only_the_named_modality(root, tiny_data):
    folder = build_derived(validate_derived_spec("img50", IMG50, REGISTRY), root)
    assert folder == root / "img50"
    assert inter_path(folder).read_bytes() == inter_path(root / "tiny").read_bytes()
    derived = load_mmrec(folder)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(derived, split).users, getattr(tiny_data, split).users)
        np.testing.assert_array_equal(getattr(derived, split).items, getattr(tiny_data, split).items)
    np.testing.assert_array_equal(derived.text_features, tiny_data.text_features)
    changed = (derived.image_features != tiny_data.image_features).any(axis=1)
    assert changed.sum() == round(0.5 * tiny_data.n_items)
    expected = corrupt_features(tiny_data.features(), parse_corruption(IMG50["corrupt"], "c"), seed=1)
    np.testing.assert_array_equal(derived.image_features, expected["image"])
    assert not list(root.glob(".staging-*"))


def test_derived_of_a_derived_dataset_applies_both_corruptions(root, tiny_data):
    assert build_order(["img50_txt30"], REGISTRY) == ["tiny", "img50", "img50_txt30"]
    for name in ("img50", "img50_txt30"):
        build_derived(validate_derived_spec(name, REGISTRY[name], REGISTRY), root)
    twice = load_mmrec(root / "img50_txt30")
    once = load_mmrec(root / "img50")
    np.testing.assert_array_equal(twice.image_features, once.image_features)
    mean_rows = (twice.text_features != tiny_data.text_features).any(axis=1)
    assert mean_rows.sum() == round(0.3 * tiny_data.n_items)
    np.testing.assert_allclose(twice.text_features[mean_rows][0], tiny_data.text_features.mean(axis=0), rtol=1e-5)
    assert lineage(["tiny", "img50_txt30"], REGISTRY) == {
        "img50_txt30": ("tiny", "image: noise 1σ on 50% of items then text: 30% of items replaced by the mean vector"),
    }


def test_a_cycle_in_from_is_a_clear_error_naming_the_chain():
    registry = {**REGISTRY, "img50": {**IMG50, "from": "img50_txt30"}}
    with pytest.raises(ConfigError, match=r"datasets\.img50_txt30: the `from:` chain is a cycle "
                                          r"\(img50_txt30 -> img50 -> img50_txt30\)"):
        source_chain("img50_txt30", registry)
    with pytest.raises(ConfigError, match="cycle"):
        validate_derived_spec("img50", registry["img50"], registry)
    selfish = {"loop": {**IMG50, "from": "loop"}}
    with pytest.raises(ConfigError, match=r"cycle \(loop -> loop\)"):
        build_order(["loop"], selfish)


@pytest.mark.parametrize("spec, expected", [
    ({**IMG50, "from": "nowhere"}, "datasets.img50.from: expected the name of a registered dataset"),
    ({k: v for k, v in IMG50.items() if k != "seed"}, "missing ['seed']"),
    ({**IMG50, "path": "/data"}, "unknown ['path']"),
    ({**IMG50, "seed": "one"}, "datasets.img50.seed: expected an integer"),
    ({**IMG50, "corrupt": {"image": {"noise": None}}}, "datasets.img50.corrupt.image.noise: expected a number"),
])
def test_bad_derived_entry_is_a_clear_error_naming_the_key(spec, expected):
    with pytest.raises(ConfigError) as info:
        validate_derived_spec("img50", spec, {**REGISTRY, "img50": spec})
    assert expected in str(info.value)


def test_data_stage_builds_sources_before_derived_datasets(tmp_path, monkeypatch, params):
    from tests.conftest import TINY

    synthetic = {"seed": 7, **{k: getattr(TINY, k) for k in TINY.__dataclass_fields__}}
    registry = {"synthetic": {"source": "synthetic"}, "img50": {**IMG50, "from": "synthetic"},
                "img50_txt30": TXT30}
    stage_params = {"dataset": "img50_txt30", "datasets": registry, "synthetic": synthetic,
                    "table": {**params["table"], "datasets": ["img50_txt30"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(stage_params))
    monkeypatch.chdir(tmp_path)
    assert data_stage.main() == 0
    built = sorted(p.name for p in (tmp_path / "data" / "datasets").iterdir())
    assert built == ["img50", "img50_txt30", "synthetic"]
    clean = load_mmrec(tmp_path / "data" / "datasets" / "synthetic")
    twice = load_mmrec(tmp_path / "data" / "datasets" / "img50_txt30")
    assert (twice.image_features != clean.image_features).any(axis=1).sum() == round(0.5 * clean.n_items)


def test_data_stage_checks_every_derived_entry_before_building_anything(tmp_path, monkeypatch, params):
    registry = {"synthetic": {"source": "synthetic"}, "bad": {**IMG50, "from": "synthetic", "corrupt": {"image": {}}}}
    stage_params = {"dataset": "synthetic", "datasets": registry, "synthetic": params["synthetic"],
                    "table": {**params["table"], "datasets": ["synthetic", "bad"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(stage_params))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"datasets\.bad\.corrupt\.image: expected a non-empty mapping"):
        data_stage.run()
    assert data_stage.main() == 1  # the same error, as one logged line
    assert not (tmp_path / "data").exists()
