"""Typed settings of the `tune` stage: params.yaml `tune` -> frozen dataclasses.

`tune.grids.<dataset>.<model>` is one cell's grid: a mapping from a params path (dotted, e.g.
`train.learning_rate`, `models.GRCN.reg_weight`, `dvib.noise_level`) to the list of values it takes.
The grid's points, how a point overrides params.yaml, and where a cell's winner is kept live here
too, so that the table stage can train at the tuned point without loading Ray.
`tune.max_epochs.<dataset>` optionally shortens the trials' epoch budget. The other keys say where
trials run (`address`, `num_cpus`, `resources_per_trial`, `storage`) and whether ASHA stops weak
trials early (`scheduler`, `asha`).
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from pipeline.config import ConfigError, from_mapping, section

SCHEDULERS = (None, "asha")
TUNED_DIR = Path("metrics/tune")  # per cell: every trial (.json) and the winning point (.best.yaml)


@dataclass(frozen=True)
class AshaConfig:
    """ASHA's rungs: every trial runs `grace_period` epochs; each rung keeps 1/`reduction_factor`."""

    grace_period: int
    reduction_factor: float

    def validate(self, where: str) -> None:
        if self.grace_period < 1 or self.reduction_factor <= 1:
            raise ConfigError(f"{where}: expected grace_period >= 1 and reduction_factor > 1")


@dataclass(frozen=True)
class TuneSettings:
    """Where and how a cell's grid runs (not what it searches: see `cell_grid`)."""

    address: str | None  # None: a local Ray started and stopped by the stage; else a cluster to join
    num_cpus: int  # CPUs of the local Ray (0 = all of the machine's); ignored when joining a cluster
    cpus_per_trial: float
    gpus_per_trial: float | None  # None = auto: 1 when the cluster has GPUs, else 0
    scheduler: str | None
    asha: AshaConfig
    storage: str  # Ray Tune's results folder (kept out of git); an interrupted cell resumes from it


def tune_settings(params: Mapping[str, Any]) -> TuneSettings:
    """Read and check params.yaml `tune` (everything but the grids)."""
    tune = section(params, "tune")
    where = "params.yaml: tune"
    address = section(tune, "address", where)
    if address is not None and (not isinstance(address, str) or not address):
        raise ConfigError(f"{where}.address: expected null, 'auto' or 'ray://host:port', got {address!r}")
    num_cpus = section(tune, "num_cpus", where)
    if isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 0:
        raise ConfigError(f"{where}.num_cpus: expected an integer >= 0 (0 = all CPUs), got {num_cpus!r}")
    resources = section(tune, "resources_per_trial", where)
    if not isinstance(resources, Mapping) or set(resources) != {"cpu", "gpu"}:
        raise ConfigError(f"{where}.resources_per_trial: expected a mapping with keys cpu and gpu, got {resources!r}")
    cpu, gpu = resources["cpu"], resources["gpu"]
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu <= 0:
        raise ConfigError(f"{where}.resources_per_trial.cpu: expected a number > 0, got {cpu!r}")
    if gpu != "auto" and (isinstance(gpu, bool) or not isinstance(gpu, (int, float)) or gpu < 0):
        raise ConfigError(f"{where}.resources_per_trial.gpu: expected 'auto' or a number >= 0, got {gpu!r}")
    scheduler = section(tune, "scheduler", where)
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"{where}.scheduler: expected null or 'asha', got {scheduler!r}")
    storage = section(tune, "storage", where)
    if not isinstance(storage, str) or not storage:
        raise ConfigError(f"{where}.storage: expected a folder path, got {storage!r}")
    return TuneSettings(
        address=address,
        num_cpus=num_cpus,
        cpus_per_trial=float(cpu),
        gpus_per_trial=None if gpu == "auto" else float(gpu),
        scheduler=scheduler,
        asha=from_mapping(AshaConfig, section(tune, "asha", where), f"{where}.asha"),
        storage=storage,
    )


def trial_epochs(params: Mapping[str, Any], dataset: str) -> int | None:
    """`tune.max_epochs.<dataset>`: the trials' epoch budget, or None (= train.epochs) when not listed."""
    budgets = section(params, "tune.max_epochs")
    if budgets is None:
        return None
    if not isinstance(budgets, Mapping):
        raise ConfigError(f"params.yaml: tune.max_epochs: expected a mapping dataset -> epochs, got {budgets!r}")
    epochs = budgets.get(dataset)
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"params.yaml: tune.max_epochs.{dataset}: expected an integer >= 1, got {epochs!r}")
    return epochs


def cell_grid(params: Mapping[str, Any], dataset: str, model: str) -> dict[str, list]:
    """The grid of one cell, `tune.grids.<dataset>.<model>`: {params path: non-empty list of values}."""
    grids = section(params, "tune.grids")
    if dataset not in grids:
        raise ConfigError(f"params.yaml: tune.grids: no grids for dataset '{dataset}' (every dataset of table.datasets "
                          f"needs one; e.g. `{dataset}: *reference` for the reference grids); have {sorted(grids)}")
    if model not in grids[dataset]:
        raise ConfigError(
            f"params.yaml: tune.grids.{dataset}: no grid for model '{model}'; have {sorted(grids[dataset])}"
        )
    grid = grids[dataset][model]
    where = f"params.yaml: tune.grids.{dataset}.{model}"
    if not isinstance(grid, Mapping) or not grid:
        raise ConfigError(f"{where}: expected a mapping of params path -> list of values, got {grid!r}")
    for path, values in grid.items():
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{where}: axis {path!r}: expected a dotted params path such as train.learning_rate")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{path}: expected a non-empty list of values, got {values!r}")
    return {path: list(values) for path, values in grid.items()}


def expand_grid(grid: Mapping[str, Sequence]) -> list[dict[str, Any]]:
    """Every point of the grid's Cartesian product as {path: value}, the last axis varying fastest."""
    paths = list(grid)
    return [dict(zip(paths, values)) for values in itertools.product(*(grid[p] for p in paths))]


def apply_overrides(params: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of `params` with each dotted path of `overrides` set to its value.

    Only existing keys can be overridden: a path that names no key of params.yaml is an error
    naming the path and the keys that exist where it stops.
    """
    out = copy.deepcopy(dict(params))
    for path, value in overrides.items():
        node = out
        parts = path.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:depth]) or "the top level"
                known = sorted(node) if isinstance(node, dict) else []
                raise ConfigError(
                    f"params.yaml: grid axis '{path}': no key '{part}' under {where}; existing keys: {known}"
                )
            if depth == len(parts) - 1:
                node[part] = copy.deepcopy(value)
            else:
                node = node[part]
    return out


def best_params_path(dataset: str, model: str, root: Path = TUNED_DIR) -> Path:
    """metrics/tune/<dataset>/<model>.best.yaml: the winning point that the table trains at."""
    return root / dataset / f"{model}.best.yaml"


def tune_metrics_path(dataset: str, model: str, root: Path = TUNED_DIR) -> Path:
    """metrics/tune/<dataset>/<model>.json: every trial of the cell and the winner."""
    return root / dataset / f"{model}.json"


def tuned_params(dataset: str, model: str, root: Path = TUNED_DIR) -> dict[str, Any]:
    """The winning {params path: value} of a cell, read from its .best.yaml (written by the tune stage)."""
    path = best_params_path(dataset, model, root)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the tune stage first (dvc repro tune@{dataset}-...)")
    overrides = yaml.safe_load(path.read_text())
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: expected a mapping of params path -> value, got {overrides!r}")
    return overrides
