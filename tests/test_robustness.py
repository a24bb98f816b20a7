"""Test-time perturbations do what they claim, and the stage re-evaluates checkpoints faithfully."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from pipeline.atomic import save_torch
from pipeline.config import ConfigError
from pipeline.graphs import write_graphs
from pipeline.models import BASE_MODELS, build_model
from pipeline.robustness import (
    Condition,
    add_gaussian_noise,
    conditions_from_params,
    drop_dimensions,
    evaluate_conditions,
    remove_modality,
)
from pipeline.runtime import cpu_model_name
from pipeline.stages import robustness as stage
from pipeline.trainer import train


@pytest.fixture
def features(tiny_data):
    return {m: torch.from_numpy(x.copy()) for m, x in tiny_data.features().items()}


def trained_checkpoint(name, data, graphs, make_config, overrides=None, epochs=2):
    """A checkpoint dict exactly as the train stage saves it, from a short real training run."""
    cfg = make_config(name, train={"epochs": epochs}, model_params=overrides)
    torch.manual_seed(0)
    objective = build_model(cfg, data, graphs)
    result = train(objective, data, cfg, torch.device("cpu"))
    return {"config": cfg.to_dict(), "state_dict": result.best_state, "metrics": {"test": result.test}}


def test_noise_level_zero_is_an_exact_copy(features):
    out = add_gaussian_noise(features, 0.0, seed=1)
    for m, x in features.items():
        assert torch.equal(out[m], x) and out[m] is not x


def test_noise_is_scaled_to_the_modality_std_and_shared_across_levels(features):
    small, large = add_gaussian_noise(features, 0.25, seed=1), add_gaussian_noise(features, 1.0, seed=1)
    for m, x in features.items():
        noise = large[m] - x
        assert noise.std().item() == pytest.approx(x.std().item(), rel=0.1)
        # Common random numbers: every level scales the same draw.
        torch.testing.assert_close(small[m] - x, 0.25 * noise, rtol=1e-4, atol=1e-5)
    again, other = add_gaussian_noise(features, 1.0, seed=1), add_gaussian_noise(features, 1.0, seed=2)
    assert all(torch.equal(again[m], large[m]) for m in features)
    assert not torch.equal(other["image"], large["image"])


def test_removed_modality_is_its_mean_vector_for_every_item(features):
    out = remove_modality(features, "image")
    mean = features["image"].mean(dim=0)
    assert torch.equal(out["image"], mean.expand_as(features["image"]))
    assert (out["image"] == out["image"][0]).all()  # constant across items: no item information left
    assert torch.equal(out["text"], features["text"])
    with pytest.raises(ValueError, match="unknown modality"):
        remove_modality(features, "audio")


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_dropped_dimensions_are_zero_at_the_requested_fraction(features, fraction):
    out = drop_dimensions(features, fraction, seed=3)
    for m, x in features.items():
        zero_columns = (out[m] == 0).all(dim=0)
        assert int(zero_columns.sum()) == round(fraction * x.shape[1])
        assert not (x == 0).all(dim=0).any()  # the fixture has no zero columns of its own
        assert torch.equal(out[m][:, ~zero_columns], x[:, ~zero_columns])
    # One permutation per modality serves every fraction: larger fractions drop supersets.
    smaller = (drop_dimensions(features, fraction / 2, seed=3)["image"] == 0).all(dim=0)
    assert not (smaller & ~(out["image"] == 0).all(dim=0)).any()


def test_conditions_from_params(params):
    conditions = conditions_from_params(params["robustness"])
    names = [c.name for c in conditions]
    assert names[0] == "noise@0" and "remove@image" in names and "remove@text" in names
    assert Condition("drop", 0.5).name == "drop@0.5"
    with pytest.raises(ConfigError, match="must contain 0"):
        conditions_from_params({**params["robustness"], "noise_levels": [0.5, 1.0]})
    with pytest.raises(ConfigError, match="unknown \\['audio'\\]"):
        conditions_from_params({**params["robustness"], "remove_modalities": ["audio"]})
    with pytest.raises(ConfigError, match="expected exactly the keys"):
        conditions_from_params({**params["robustness"], "levels": [0.0]})


# Every base plain, and one DVIB wrapper (whose scorer and features are its base's).
@pytest.mark.parametrize(("base", "variant"), [(b, "") for b in BASE_MODELS] + [(next(iter(BASE_MODELS)), "c")])
def test_noise_level_zero_reproduces_the_checkpoint_test_metrics(base, variant, tiny_data, tiny_graphs, make_config,
                                                                 params):
    # Trained with the evaluation overrides (e.g. no cached scorer), the clean condition must be exact.
    overrides = params["robustness"]["model_overrides"].get(base)
    checkpoint = trained_checkpoint(base + variant, tiny_data, tiny_graphs, make_config, overrides)
    record = stage.evaluate_checkpoint(checkpoint, tiny_data, tiny_graphs, params["robustness"], "cpu")
    assert record["conditions"]["noise@0"] == checkpoint["metrics"]["test"]
    assert record["clean_matches_checkpoint"] is True
    assert record["hardware"]["device_name"] == cpu_model_name()
    assert list(record["conditions"]) == [c.name for c in conditions_from_params(params["robustness"])]


def test_vbpr_metrics_change_under_perturbation_and_features_are_restored(tiny_data, tiny_graphs, make_config, params):
    checkpoint = trained_checkpoint("VBPRa", tiny_data, tiny_graphs, make_config, epochs=4)
    objective, _cfg = stage.restore_objective(checkpoint, tiny_data, tiny_graphs, {})
    objective.eval()
    features = stage.base_model(objective).item_features()
    seen = []

    def evaluate(scorer):
        seen.append({m: x.clone() for m, x in features.items()})
        # Squared scores: a plain sum is invariant to mean replacement, which VBPR's linear projection keeps.
        return {"score_sum": float(scorer(torch.arange(tiny_data.n_users)).square().sum())}

    conditions = [Condition("noise", 0.0), Condition("noise", 1.0), Condition("remove", modality="text")]
    results = evaluate_conditions(objective, features, conditions, evaluate, seed=5)
    # The scorer saw the perturbed features, the scores moved, and the clean values are back.
    assert torch.equal(seen[0]["image"], torch.from_numpy(tiny_data.image_features))
    assert not torch.equal(seen[1]["image"], seen[0]["image"])
    assert (seen[2]["text"] == seen[2]["text"][0]).all()
    assert results["noise@1"]["score_sum"] != results["noise@0"]["score_sum"]
    assert results["remove@text"]["score_sum"] != results["noise@0"]["score_sum"]
    assert torch.equal(features["image"], torch.from_numpy(tiny_data.image_features))
    assert torch.equal(features["text"], torch.from_numpy(tiny_data.text_features))
    record = stage.evaluate_checkpoint(checkpoint, tiny_data, tiny_graphs, params["robustness"], "cpu")
    assert record["scores_respond_to_features"] is True


def test_stage_cli_writes_the_metrics_file(tmp_path, monkeypatch, tiny_dir, tiny_data, tiny_graphs, make_config, params):
    shutil.copytree(tiny_dir, tmp_path / "data/datasets/tiny")
    write_graphs(tmp_path / "data/graphs/tiny", tiny_data, knn_k=5)
    (tmp_path / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    checkpoint = trained_checkpoint("VBPRc", tiny_data, tiny_graphs, make_config)
    save_torch(tmp_path / "models/VBPRc/seed999.pt", checkpoint)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "metrics/robustness/tiny/VBPRc"
    assert stage.main(["--dataset", "tiny", "--checkpoints", "models/VBPRc", "--output", str(out)]) == 0
    record = json.loads((out / "seed999.json").read_text())
    assert record["model"] == "VBPRc" and record["clean_matches_checkpoint"] is True
    assert record["conditions"]["noise@0"] == checkpoint["metrics"]["test"]
    assert stage.main(["--dataset", "tiny", "--checkpoints", "models/missing", "--output", str(out)]) == 1
    assert (out / "seed999.json").is_file()  # a failed run leaves the earlier result in place
