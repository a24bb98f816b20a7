"""Corruptions of training features: the statistics each kind promises, seeding, and spec errors."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import ConfigError
from pipeline.corruption import (
    ModalityCorruption, corrupt_features, corrupt_modality, parse_corruption,
)


@pytest.fixture(scope="module")
def matrix() -> np.ndarray:
    """1000 items × 40 dims with very different scales and offsets per dimension."""
    rng = np.random.default_rng(0)
    scales = np.geomspace(0.01, 100.0, 40)
    return (rng.standard_normal((1000, 40)) * scales + rng.uniform(-5, 5, 40)).astype(np.float32)


def _changed_rows(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.flatnonzero((before != after).any(axis=1))


def test_noise_has_the_level_times_each_dimensions_std_on_the_chosen_share_of_items(matrix):
    out = corrupt_modality(matrix, ModalityCorruption(noise=0.5, fraction=0.4), seed=3, modality="image")
    noisy = _changed_rows(matrix, out)
    assert len(noisy) == 400
    ratio = (out[noisy] - matrix[noisy]).astype(np.float64).std(axis=0) / matrix.astype(np.float64).std(axis=0)
    # 400 draws per dimension: a standard error of 3.5% on each dimension's std, 0.6% on their mean.
    np.testing.assert_allclose(ratio, 0.5, rtol=0.15)
    assert abs(ratio.mean() - 0.5) < 0.01
    assert abs((out[noisy] - matrix[noisy]).mean(axis=0) / matrix.std(axis=0)).max() < 0.2


def test_noise_on_all_items_by_default(matrix):
    out = corrupt_modality(matrix, ModalityCorruption(noise=1.0), seed=3, modality="image")
    assert len(_changed_rows(matrix, out)) == len(matrix)


@pytest.mark.parametrize("kind", ["mean", "zeros", "random"])
def test_replace_changes_exactly_the_share_of_items_and_nothing_else(matrix, kind):
    out = corrupt_modality(matrix, ModalityCorruption(replace=kind, replace_fraction=0.3), seed=5, modality="text")
    changed = _changed_rows(matrix, out)
    assert len(changed) == 300
    kept = np.setdiff1d(np.arange(len(matrix)), changed)
    np.testing.assert_array_equal(out[kept], matrix[kept])
    if kind == "mean":
        np.testing.assert_allclose(out[changed], np.broadcast_to(matrix.astype(np.float64).mean(axis=0), (300, 40)),
                                   rtol=1e-6)
    elif kind == "zeros":
        assert not out[changed].any()
    else:
        # Each replaced row is some other item's clean row, never its own.
        for item in changed:
            donors = np.flatnonzero((matrix == out[item]).all(axis=1))
            assert len(donors) and item not in donors


def test_duplicate_overwrites_the_share_of_dimensions_with_copies_of_untouched_ones(matrix):
    out = corrupt_modality(matrix, ModalityCorruption(duplicate=0.25), seed=2, modality="image")
    changed = np.flatnonzero((out != matrix).any(axis=0))
    assert len(changed) == 10
    untouched = np.setdiff1d(np.arange(40), changed)
    np.testing.assert_array_equal(out[:, untouched], matrix[:, untouched])
    for dim in changed:
        assert any(np.array_equal(out[:, dim], matrix[:, other]) for other in untouched)
    assert len(np.unique(out, axis=1).T) == 30  # 10 dimensions are redundant copies


def test_remove_gives_every_item_the_mean_vector(matrix):
    out = corrupt_modality(matrix, ModalityCorruption(remove=True), seed=0, modality="image")
    assert out.dtype == np.float32 and out.shape == matrix.shape
    np.testing.assert_allclose(out, np.broadcast_to(matrix.astype(np.float64).mean(axis=0), matrix.shape), rtol=1e-6)
    assert (out == out[0]).all()


def test_same_seed_same_features_other_seed_other_features(matrix):
    spec = parse_corruption({"image": {"noise": 1.0, "fraction": 0.5, "replace": "random", "replace_fraction": 0.2,
                                       "duplicate": 0.1}}, "corrupt")
    first = corrupt_features({"image": matrix, "text": matrix}, spec, seed=11)
    again = corrupt_features({"image": matrix, "text": matrix}, spec, seed=11)
    other = corrupt_features({"image": matrix, "text": matrix}, spec, seed=12)
    np.testing.assert_array_equal(first["image"], again["image"])
    assert not np.array_equal(first["image"], other["image"])
    assert first["text"] is matrix  # a modality the spec does not name is passed through untouched


def test_each_kind_draws_from_its_own_stream(matrix):
    zeros = ModalityCorruption(replace="zeros", replace_fraction=0.3)
    with_copies = ModalityCorruption(replace="zeros", replace_fraction=0.3, duplicate=0.25)
    alone = _changed_rows(matrix, corrupt_modality(matrix, zeros, seed=4, modality="image"))
    out = corrupt_modality(matrix, with_copies, seed=4, modality="image")
    np.testing.assert_array_equal(np.flatnonzero(~out.any(axis=1)), alone)


def test_input_arrays_are_never_modified(matrix):
    before = matrix.copy()
    spec = parse_corruption({"image": {"noise": 2.0, "replace": "mean", "replace_fraction": 0.5, "duplicate": 0.5}},
                            "corrupt")
    corrupt_features({"image": matrix}, spec, seed=1)
    np.testing.assert_array_equal(matrix, before)


@pytest.mark.parametrize("corrupt, expected", [
    ({"image": {"noise": "high"}}, "datasets.x.corrupt.image.noise: expected a number, got 'high'"),
    ({"image": {"noise": -1}}, "datasets.x.corrupt.image.noise: expected a number >= 0"),
    ({"image": {"noise": 1.0, "fraction": 1.5}},
     "datasets.x.corrupt.image.fraction: expected a number >= 0, at most 1"),
    ({"image": {"fraction": 0.5}}, "datasets.x.corrupt.image.fraction: the share of noisy items needs `noise`"),
    ({"image": {"replace": "mean"}}, "datasets.x.corrupt.image: `replace` (random|mean|zeros) and `replace_fraction`"),
    ({"image": {"replace": "median", "replace_fraction": 0.1}}, "datasets.x.corrupt.image.replace: expected one of"),
    ({"image": {"duplicate": 1.0}}, "datasets.x.corrupt.image.duplicate: expected a number >= 0, below 1"),
    ({"image": {"remove": True, "noise": 1.0}}, "datasets.x.corrupt.image: `remove: true` replaces the whole modality"),
    ({"image": {"remove": "yes"}}, "datasets.x.corrupt.image.remove: expected true/false"),
    ({"image": {"nois": 1.0}}, "datasets.x.corrupt.image: unknown key(s) ['nois']"),
    ({"audio": {"noise": 1.0}}, "datasets.x.corrupt: unknown modality ['audio']"),
    ({"image": {}}, "datasets.x.corrupt.image: expected a non-empty mapping"),
    ([], "datasets.x.corrupt: expected a mapping"),
])
def test_bad_spec_is_a_clear_error_naming_the_key(corrupt, expected):
    with pytest.raises(ConfigError) as info:
        parse_corruption(corrupt, "datasets.x.corrupt")
    assert expected in str(info.value)


def test_spec_describes_itself():
    spec = parse_corruption({"text": {"remove": True}, "image": {"noise": 1.0, "fraction": 0.5}}, "c")
    assert spec.describe() == "image: noise 1σ on 50% of items; text: removed (mean vector)"
