"""Shared fixtures: tiny real MMRec-format data from the project's own generator, and configs."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.config import SyntheticConfig, experiment_config, read_params
from pipeline.dataset import load_mmrec
from pipeline.graphs import graphs_in_memory
from pipeline.models.base import Batch
from pipeline.sampling import NegativeSampler
from pipeline.synthetic import write_synthetic

ROOT = Path(__file__).resolve().parents[1]

TINY = SyntheticConfig(
    n_users=60,
    n_items=80,
    latent_dim=8,
    min_interactions=5,
    mean_interactions=10.0,
    image_dim=48,
    text_dim=24,
    preference_temperature=0.35,
    modality_noise=0.5,
    redundant_fraction=0.25,
    corrupted_fraction=0.1,
)


@pytest.fixture(scope="session")
def params() -> dict:
    """The project's params.yaml."""
    return read_params(ROOT / "params.yaml")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny synthetic dataset written as a real MMRec-format folder."""
    folder = tmp_path_factory.mktemp("data") / "tiny"
    write_synthetic(folder, TINY, seed=7)
    return folder


@pytest.fixture(scope="session")
def tiny_data(tiny_dir):
    return load_mmrec(tiny_dir)


@pytest.fixture(scope="session")
def tiny_graphs(tiny_data):
    return graphs_in_memory(tiny_data, knn_k=5)


@pytest.fixture
def make_config(params):
    """make_config(model, train={...}, dvib={...}, model_params={...}) -> ExperimentConfig for tests."""

    def make(model: str, *, train=None, dvib=None, model_params=None, eval=None):
        cfg = experiment_config(params, model, "tiny")
        train_cfg = dataclasses.replace(cfg.train, **{"device": "cpu", "epochs": 3, "batch_size": 128, **(train or {})})
        return dataclasses.replace(
            cfg,
            train=train_cfg,
            eval=dataclasses.replace(cfg.eval, **(eval or {})),
            dvib=dataclasses.replace(cfg.dvib, **(dvib or {})),
            model_params={**cfg.model_params, **(model_params or {})},
        )

    return make


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # Tiny tensors: thread hand-offs cost more than they save, 10-50x on a busy 2-core machine.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_batch(data, size=96, seed=0) -> Batch:
    """A seeded training batch of `size` train rows with sampled negatives."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(data.train), generator=g)[:size]
    users = torch.as_tensor(data.train.users)[rows]
    negatives = NegativeSampler(data.train, data.n_items, "cpu").sample(users, g)
    return Batch(users, torch.as_tensor(data.train.items)[rows], negatives)


PROJECT_FILES = (
    "pipeline", "params.yaml", "dvc.yaml", ".dvc/config", ".dvc/plots", ".dvcignore", ".gitignore", "pyproject.toml",
    "data/checksums.json",
)


def copy_project(work: Path) -> None:
    """Copy the project's code and DVC files into `work` (a temporary DVC project for a test)."""
    for name in PROJECT_FILES:
        src, dst = ROOT / name, work / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
