"""Stage `tune@<dataset>-<base>-<variant>`: one cell's grid as Ray Tune trials, selected on validation.

Params: seed, train, eval, dvib, models.<base> (what each trial trains), tune.grids.<dataset>.<model>
(the grid), tune.max_epochs (the trials' epoch budget), tune.scheduler and tune.asha; tune.address, num_cpus, resources_per_trial and storage
say only where trials run. Writes metrics/tune/<dataset>/<model>.json (every trial and the winner)
and metrics/tune/<dataset>/<model>.best.yaml (the winning point, which the table trains at).
Usage: python -m pipeline.stages.tune --model FREEDOMa --dataset synthetic
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from pipeline.atomic import write_json, write_text
from pipeline.config import read_params, section
from pipeline.model_names import parse_model_name
from pipeline.stages.common import (
    DATASETS_DIR, GRAPHS_DIR, interrupt_on_sigterm, run_cell_stage, signals_deferred,
)
from pipeline.tuning import AllTrialsFailed, CellSpec, experiment_key, run_grid, select_best
from pipeline.tuning_config import (
    TuneSettings, apply_overrides, best_params_path, cell_grid, expand_grid, trial_epochs, tune_metrics_path,
    tune_settings,
)

log = logging.getLogger("pipeline.stages.tune")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
TRIAL_PARAMS = ("seed", "train", "eval", "dvib")


@contextmanager
def ray_session(settings: TuneSettings) -> Iterator[None]:
    """Connect to Ray for the stage's lifetime: a fresh local instance (address null) or a cluster.

    Ray is shut down on the way out, also on Ctrl-C or SIGTERM (raised as StageInterrupted), so no
    Ray process of a local instance outlives the stage. An already-connected Ray (a caller's) is used
    as it is and left running.
    """
    if settings.address is None:
        # A local instance serves only this machine: keep Ray on loopback (read when ray is imported).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    # Workers import this checkout of the project: on a cluster it lies at the same path on every node.
    python_path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
    try:
        if settings.address is None:
            # Local workers inherit the environment (a runtime_env would forgo Ray's prestarted workers).
            os.environ["PYTHONPATH"] = python_path
            ray.init(address="local", num_cpus=settings.num_cpus or None, include_dashboard=False,
                     log_to_driver=False)
        else:
            ray.init(address=settings.address, runtime_env={"env_vars": {"PYTHONPATH": python_path}},
                     log_to_driver=False)
        signal.signal(signal.SIGTERM, interrupt_on_sigterm)  # after ray.init, which installs a handler that aborts
        yield
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, previous)


def cell_spec(params: dict, model: str, dataset: str, settings: TuneSettings) -> CellSpec:
    """The shared part of a cell's trials, with every grid point checked against params.yaml's keys."""
    base, _variant = parse_model_name(model)
    points = expand_grid(cell_grid(params, dataset, model))
    trial_params = {key: section(params, key) for key in TRIAL_PARAMS}
    trial_params["models"] = {base: section(params, f"models.{base}")}
    epochs = trial_epochs(params, dataset)
    if epochs is not None:  # a budget, never more than the table's own
        trial_params["train"] = {**trial_params["train"], "epochs": min(epochs, trial_params["train"]["epochs"])}
    for point in points:
        apply_overrides(trial_params, point)  # an unknown path fails here, before Ray starts
    return CellSpec(
        model=model, dataset=dataset, params=trial_params, points=tuple(points),
        data_dir=str((Path(DATASETS_DIR) / dataset).resolve()),
        graphs_dir=str((Path(GRAPHS_DIR) / dataset).resolve()),
        cpus_per_trial=settings.cpus_per_trial,
    )


def tune_cell(model: str, dataset: str, params: dict | None = None) -> dict:
    """Run the cell's grid, write its trials and the winning point; return {"trials": [...], "best": {...}}."""
    params = read_params() if params is None else params
    settings = tune_settings(params)
    spec = cell_spec(params, model, dataset, settings)
    valid_metric = section(params, "eval.valid_metric")
    experiment_dir = Path(settings.storage) / f"{dataset}-{model}-{experiment_key(spec, settings, PROJECT_ROOT / 'pipeline')}"
    log.info("tuning %s on %s: %d points, experiment %s", model, dataset, len(spec.points), experiment_dir)
    with ray_session(settings):
        trials = run_grid(spec, settings, valid_metric, experiment_dir)
    for trial in trials:
        log.info("%s %s valid %s %s", trial["status"], trial["params"], valid_metric,
                 trial["valid"].get(valid_metric, trial["error"]))
    try:
        best = select_best(trials, valid_metric)
    except AllTrialsFailed as exc:
        raise AllTrialsFailed(f"tune {model} on {dataset}: {exc}") from None
    outcome = {"trials": trials, "best": best}
    with signals_deferred():  # the record and the winning point are written together or not at all
        write_json(tune_metrics_path(dataset, model), outcome)
        write_text(best_params_path(dataset, model),
                   f"# winning point of tune.grids.{dataset}.{model} (selected on validation {valid_metric})\n"
                   + yaml.safe_dump(best["params"], sort_keys=False))
    shutil.rmtree(experiment_dir, ignore_errors=True)  # kept only to resume an interrupted run
    log.info("%s on %s: best %s, valid %s %.4f", model, dataset, best["params"], valid_metric,
             best["valid"][valid_metric])
    return outcome


def main(argv: list[str] | None = None) -> int:
    return run_cell_stage(tune_cell, log, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
