"""Item ids with gaps (feature rows for items without interactions): accepted, never relevant, trainable."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.dataset import DatasetError, inter_path, load_mmrec, write_mmrec
from pipeline.graphs import graphs_in_memory
from pipeline.model_names import model_names
from pipeline.models import build_model
from pipeline.sampling import NegativeSampler
from pipeline.trainer import train


def _gap_id(item: np.ndarray) -> np.ndarray:
    # Item i moves to i + i // 10 + 1: ids 0, 11, 22, ... have no interaction.
    return item + item // 10 + 1


@pytest.fixture(scope="module")
def gap_dir(tiny_dir, tiny_data, tmp_path_factory):
    """The tiny dataset with its item ids spread out, and random feature rows for the unused ids."""
    frame = pd.read_csv(inter_path(tiny_dir), sep="\t")
    frame["itemID"] = _gap_id(frame["itemID"].to_numpy())
    n_items = int(frame["itemID"].max()) + 1
    rng = np.random.default_rng(0)
    features = {}
    for modality, clean in tiny_data.features().items():
        rows = rng.standard_normal((n_items, clean.shape[1])).astype(np.float32)
        rows[_gap_id(np.arange(tiny_data.n_items))] = clean
        features[modality] = rows
    folder = tmp_path_factory.mktemp("gaps") / "gaps"
    write_mmrec(folder, frame, features["image"], features["text"])
    return folder


@pytest.fixture(scope="module")
def gap_data(gap_dir):
    return load_mmrec(gap_dir)


def _gaps(data) -> np.ndarray:
    used = np.unique(np.concatenate([data.train.items, data.valid.items, data.test.items]))
    return np.setdiff1d(np.arange(data.n_items), used)


def test_loader_accepts_item_gaps_counts_them_and_keeps_features_by_id(gap_dir, tiny_data, caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.dataset"):
        data = load_mmrec(gap_dir)
    n_gaps = data.n_items - tiny_data.n_items
    assert data.n_items == int(_gap_id(np.array(tiny_data.n_items - 1))) + 1 and n_gaps > 0
    assert f"{n_gaps} of {data.n_items} item ids have no interaction, e.g. [0, 11, 22" in caplog.text
    np.testing.assert_array_equal(data.train.items, _gap_id(tiny_data.train.items))
    np.testing.assert_array_equal(data.image_features[_gap_id(np.arange(tiny_data.n_items))], tiny_data.image_features)
    assert len(_gaps(data)) == n_gaps  # gap ids are in no split: never relevant


def test_negative_sampler_never_draws_an_item_without_train_rows(gap_data):
    sampler = NegativeSampler(gap_data.train, gap_data.n_items, "cpu")
    users = torch.as_tensor(gap_data.train.users).repeat(20)
    drawn = sampler.sample(users, torch.Generator().manual_seed(0)).numpy()
    assert not np.isin(drawn, _gaps(gap_data)).any()
    assert np.isin(drawn, gap_data.train.items).all()


@pytest.mark.parametrize("name", model_names())
def test_every_model_trains_and_ranks_with_items_that_have_no_interaction(name, gap_data, make_config):
    graphs = graphs_in_memory(gap_data, knn_k=5)
    degree = torch.sparse.sum(graphs.norm_adj, dim=1).to_dense()[gap_data.n_users:]
    assert (degree[_gaps(gap_data)] == 0).all()  # isolated nodes: no adjacency entry, no division by zero
    cfg = make_config(name, train={"epochs": 2})
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, gap_data, graphs)
    result = train(model, gap_data, cfg, torch.device("cpu"))
    assert result.status == "max_epochs" and result.best_epoch >= 0
    assert all(np.isfinite(v) for v in result.test.values())
    model.eval()
    scores = model.scorer()(torch.arange(4))
    assert scores.shape == (4, gap_data.n_items) and torch.isfinite(scores).all()


def test_users_must_still_be_contiguous_and_the_error_says_how_to_fix_it(gap_dir, tmp_path):
    folder = tmp_path / "gaps"
    shutil.copytree(gap_dir, folder)
    frame = pd.read_csv(inter_path(folder), sep="\t")
    frame.loc[frame["userID"] == frame["userID"].max(), "userID"] += 5
    frame.to_csv(inter_path(folder), sep="\t", index=False)
    with pytest.raises(DatasetError) as info:
        load_mmrec(folder)
    message = str(info.value)
    assert f"{inter_path(folder)}: column userID: ids must be contiguous" in message
    assert "re-index the userID column to 0.." in message


def test_features_must_cover_the_largest_item_id(gap_dir, gap_data, tmp_path):
    folder = tmp_path / "gaps"
    shutil.copytree(gap_dir, folder)
    np.save(folder / "text_feat.npy", gap_data.text_features[:-1])
    with pytest.raises(DatasetError) as info:
        load_mmrec(folder)
    message = str(info.value)
    assert f"{folder / 'text_feat.npy'}: has {gap_data.n_items - 1} rows" in message
    assert f"itemIDs up to {gap_data.n_items - 1}" in message


def test_errors_name_the_users_own_folder_not_the_staging_copy(gap_dir, tmp_path):
    staged = tmp_path / ".staging-x" / "gaps"
    shutil.copytree(gap_dir, staged)
    (staged / "image_feat.npy").unlink()
    with pytest.raises(DatasetError) as info:
        load_mmrec(staged, shown_as="/home/me/gaps")
    assert str(info.value) == "/home/me/gaps/image_feat.npy: feature file not found"
