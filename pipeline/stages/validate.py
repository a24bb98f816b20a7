"""Stage `validate`: check every params.yaml section the run uses, before any other stage runs.

DVC removes a stage's outputs just before it runs the stage's command. Every other stage depends
on this stage's output, so a bad value fails here, in seconds, naming the key, the value and what
was expected, and no earlier result has been touched. The output's content does not depend on the
values checked, so a valid change re-runs only the stages whose own params changed.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Mapping

from pipeline.atomic import write_json
from pipeline.config import (
    ConfigError, SyntheticConfig, experiment_config, from_mapping, read_params, section, table_config,
)
from pipeline.derived import build_order, is_derived, validate_derived_spec
from pipeline.models import check_model_params
from pipeline.robustness import conditions_from_params
from pipeline.runtime import resolve_device
from pipeline.sources.registry import resolve_source
from pipeline.stages.common import needed_datasets, run_stage, setup_logging
from pipeline.tuning_config import apply_overrides, cell_grid, expand_grid, trial_epochs, tune_settings

log = logging.getLogger("pipeline.stages.validate")
OUTPUT = Path("data/validated.json")
CHECKED = ("model", "dataset", "seed", "datasets", "synthetic", "graphs", "train", "eval", "dvib", "models",
           "table", "robustness", "tune")


def check_datasets(params: Mapping[str, Any]) -> None:
    """Every needed dataset is a valid registry entry; the synthetic generator's knobs when it is used."""
    registry = section(params, "datasets")
    if not isinstance(registry, Mapping):
        raise ConfigError("params.yaml: datasets: expected a mapping of dataset name -> registry entry")
    for name in build_order(needed_datasets(params), registry):
        if name not in registry:
            raise ConfigError(f"params.yaml: dataset {name!r} is not in the `datasets` registry "
                              f"(known: {sorted(registry)}); add an entry, e.g. `-S '+datasets.{name}.source=path' "
                              f"-S '+datasets.{name}.path=/your/folder'`")
        spec = registry[name]
        if is_derived(spec):
            validate_derived_spec(name, spec, registry)
        elif isinstance(spec, Mapping) and spec.get("source") == "synthetic":
            knobs = {k: v for k, v in section(params, "synthetic").items() if k != "seed"}
            from_mapping(SyntheticConfig, knobs, "params.yaml: synthetic")
            seed = section(params, "synthetic.seed")
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ConfigError(f"params.yaml: synthetic.seed: expected an integer, got {seed!r}")
        else:
            resolve_source(name, spec)


def check_tuning(params: Mapping[str, Any], cells: list[tuple[str, str]]) -> None:
    """The Ray settings, and every table cell's grid: each point must override existing keys with valid values."""
    tune_settings(params)
    for dataset, model in cells:
        trial_epochs(params, dataset)
        for point in expand_grid(cell_grid(params, dataset, model)):
            cfg = experiment_config(apply_overrides(params, point), model, dataset)
            check_model_params(cfg.model, cfg.model_params)


def check_params(params: Mapping[str, Any]) -> list[str]:
    """Validate every section a `dvc repro` reads; return the names of the sections checked."""
    table = table_config(params)
    runs = [(section(params, "dataset"), section(params, "model")), *table.cells()]
    for dataset, model in runs:
        cfg = experiment_config(params, model, dataset)
        check_model_params(cfg.model, cfg.model_params)
        resolve_device(cfg.train.device)
    check_datasets(params)
    knn_k = section(params, "graphs.knn_k")
    if isinstance(knn_k, bool) or not isinstance(knn_k, int) or knn_k < 1:
        raise ConfigError(f"params.yaml: graphs.knn_k: expected an integer >= 1, got {knn_k!r}")
    conditions_from_params(section(params, "robustness"))
    check_tuning(params, table.cells())
    return list(CHECKED)


def run() -> None:
    checked = check_params(read_params())
    write_json(OUTPUT, {"checked": checked})
    log.info("params.yaml: %s valid", ", ".join(checked))


def main() -> int:
    setup_logging()
    return run_stage(run, log)


if __name__ == "__main__":
    sys.exit(main())
