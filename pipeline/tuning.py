"""Per-cell hyper-parameter search on Ray Tune, selected on validation only.

A cell (dataset × model) has a grid: {params path: values}. Every point of its Cartesian product
is one Ray Tune trial that trains the project's own model with the project's own trainer on the
params overridden at that point, reporting the validation metrics every epoch. The winner is the
successful trial with the best `eval.valid_metric` on validation; test metrics are recorded for
every trial and never read for the choice.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.errors import UserError
from pipeline.tuning_config import TuneSettings, apply_overrides

log = logging.getLogger(__name__)
STATUSES = ("ok", "failed", "stopped")


class AllTrialsFailed(UserError, RuntimeError):
    """Every trial of a cell failed: nothing can be selected."""


class TrialDiverged(RuntimeError):
    """A trial's training loss became NaN or infinite."""


@dataclass(frozen=True)
class CellSpec:
    """What every trial of one cell shares: the model, its data folders and the untuned params."""

    model: str
    dataset: str
    params: dict
    points: tuple  # the grid's points, {params path: value}; a trial's config names one by index
    data_dir: str  # absolute: trials run in Ray workers, possibly on other machines
    graphs_dir: str
    cpus_per_trial: float


def run_trial(config: Mapping[str, Any], spec: CellSpec) -> None:
    """Ray Tune trainable: train `spec.model` at point `config["index"]`, reporting validation metrics per epoch.

    The last report carries the best-validation epoch's validation and test metrics and `final`.
    A training loss that becomes NaN or infinite fails the trial.
    """
    import ray
    import torch
    from ray import tune

    from pipeline.config import experiment_config
    from pipeline.dataset import load_mmrec
    from pipeline.graphs import load_graphs
    from pipeline.models import build_model
    from pipeline.runtime import configure_runtime, resolve_device
    from pipeline.trainer import train

    cfg = experiment_config(apply_overrides(spec.params, spec.points[config["index"]]), spec.model, spec.dataset)
    configure_runtime(cfg.train.threads or max(1, int(spec.cpus_per_trial)))
    device = resolve_device(cfg.train.device)
    for folder in (spec.data_dir, spec.graphs_dir):
        if not Path(folder).is_dir():
            raise FileNotFoundError(
                f"{folder}: not found on this Ray node; every node must see the project folder at the same path"
            )
    torch.manual_seed(cfg.seed)
    data = load_mmrec(spec.data_dir)
    graphs = load_graphs(spec.graphs_dir, device)
    objective = build_model(cfg, data, graphs)

    def report_epoch(epoch) -> None:
        tune.report({"epoch": epoch.epoch + 1, **{f"valid/{k}": v for k, v in epoch.valid.items()}})

    result = train(objective, data, cfg, device, on_epoch=report_epoch)
    if result.status == "diverged":
        raise TrialDiverged(
            f"training loss became NaN or infinite at epoch {result.epochs_run - 1} (best epoch {result.best_epoch})"
        )
    tune.report({
        "epoch": result.epochs_run,
        **{f"valid/{k}": v for k, v in result.valid.items()},
        **{f"test/{k}": v for k, v in result.test.items()},
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "seconds": result.train_seconds,
        "node": ray.get_runtime_context().get_node_id(),
        "final": True,  # not Tune's own `done`, which it also sets on a trial the scheduler stopped
    })


def error_message(error: BaseException) -> str:
    """The original exception of a failed trial as 'Type: message' (Ray wraps it)."""
    cause = error
    while getattr(cause, "cause", None) is not None and cause.cause is not cause:
        cause = cause.cause
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}".rstrip(": ")


def _split_metrics(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def trial_record(point: Mapping[str, Any], metrics: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
                 error: BaseException | None, valid_metric: str) -> dict:
    """One trial in the output shape: params, status, valid, test, best_epoch, epochs_run, seconds, error.

    `metrics` is the trial's last report, `history` all its reports. A trial that ended without its
    final report was stopped early by the scheduler: its best reported validation epoch is kept,
    and it has no test metrics.
    """
    record = {"params": dict(point), "status": "ok", "valid": {}, "test": {}, "best_epoch": None,
              "epochs_run": None, "seconds": None, "error": None}
    if error is not None:
        record.update(status="failed", error=error_message(error))
    elif metrics.get("final"):
        record.update(valid=_split_metrics(metrics, "valid/"), test=_split_metrics(metrics, "test/"),
                      best_epoch=int(metrics["best_epoch"]), epochs_run=int(metrics["epochs_run"]),
                      seconds=round(float(metrics["seconds"]), 3))
    else:
        key = f"valid/{valid_metric}"
        epochs = [h for h in history if key in h]
        best = max(epochs, key=lambda h: h[key]) if epochs else {}
        record.update(status="stopped", valid=_split_metrics(best, "valid/"),
                      best_epoch=int(best["epoch"]) - 1 if best else None,
                      epochs_run=max((int(h["epoch"]) for h in epochs), default=0),
                      seconds=round(float(metrics.get("time_total_s", 0.0)), 3))
    if record["status"] == "ok" and not all(math.isfinite(v) for v in record["valid"].values()):
        record.update(status="failed", error="validation metrics are not finite")
    return record


def select_best(trials: Sequence[Mapping], valid_metric: str) -> dict:
    """The successful trial with the highest validation `valid_metric` (the first one on ties).

    Reads only `status` and `valid`: test metrics never enter the choice. Every trial failed or
    stopped -> AllTrialsFailed listing each trial's params and error.
    """
    ok = [t for t in trials if t["status"] == "ok"]
    if not ok:
        lines = [f"  {json.dumps(t['params'])}: {t['status']}: {t['error'] or 'stopped early'}" for t in trials]
        raise AllTrialsFailed(f"every one of the {len(trials)} trials failed:\n" + "\n".join(lines))
    return dict(max(ok, key=lambda t: t["valid"][valid_metric]))  # max keeps the first of equal values


def experiment_key(spec: CellSpec, settings: TuneSettings, sources: Path) -> str:
    """A short hash of everything a trial's result depends on (params, points, scheduler, code, data files).

    An interrupted cell is resumed from Ray's saved experiment only when the key is the same.
    """
    digest = hashlib.sha256()
    relevant = {"spec": dataclasses.asdict(spec) | {"data_dir": None, "graphs_dir": None, "cpus_per_trial": None},
                "scheduler": settings.scheduler,
                "asha": dataclasses.asdict(settings.asha) if settings.scheduler else None}
    digest.update(json.dumps(relevant, sort_keys=True, default=str).encode())
    for path in sorted(sources.rglob("*.py")):
        digest.update(path.relative_to(sources).as_posix().encode())
        digest.update(path.read_bytes())
    for folder in (Path(spec.data_dir), Path(spec.graphs_dir)):  # data files by name, size and time
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def trial_resources(settings: TuneSettings, cluster_gpus: float) -> dict[str, float]:
    """Ray resources of one trial: the configured CPUs, and GPUs (auto: 1 when the cluster has any)."""
    gpus = settings.gpus_per_trial if settings.gpus_per_trial is not None else (1.0 if cluster_gpus > 0 else 0.0)
    return {"cpu": settings.cpus_per_trial, "gpu": gpus}


def run_grid(spec: CellSpec, settings: TuneSettings, valid_metric: str, experiment_dir: Path) -> list[dict]:
    """Run every point of `spec.points` as a Ray Tune trial on the connected Ray cluster; return the trial records in grid order.

    Ray must already be initialised. The experiment is saved under `experiment_dir`; when a saved
    experiment of the same name is there (an interrupted run), its finished trials are kept and
    only the others run.
    """
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    resources = trial_resources(settings, ray.cluster_resources().get("GPU", 0.0))
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec), resources)
    points = spec.points
    param_space = {"index": tune.grid_search(list(range(len(points))))}
    path = str(experiment_dir.resolve())
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
    else:
        scheduler = None
        if settings.scheduler == "asha":
            scheduler = ASHAScheduler(time_attr="epoch", metric=f"valid/{valid_metric}", mode="max",
                                      # past the last epoch: ASHA stops a trial that reaches max_t, which
                                      # would cut off the final report (test metrics) of a finished trial
                                      max_t=int(spec.params["train"]["epochs"]) + 1,
                                      grace_period=settings.asha.grace_period,
                                      reduction_factor=settings.asha.reduction_factor)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            # Reused trial processes skip a fresh worker's imports (torch: seconds per trial).
            tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True),
            run_config=tune.RunConfig(name=experiment_dir.name, storage_path=str(experiment_dir.parent.resolve()),
                                      failure_config=tune.FailureConfig(max_failures=0), verbose=0,
                                      callbacks=[CSVLoggerCallback(), JsonLoggerCallback()]),
        )
    # Progress and results as CSV and JSON only: TensorBoard's writer rejects the '@' in metric names.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    results = tuner.fit()
    if results.num_terminated + results.num_errors < len(results):
        # Tune's own Ctrl-C handler ends fit() early with the state saved: nothing may be selected.
        raise KeyboardInterrupt(f"Ray Tune stopped before every trial ended; re-run to resume {path}")
    records: dict[int, dict] = {}
    for result in results:
        # A restored experiment's errored trials come back without config: their folder has it.
        config = result.config or json.loads((Path(result.path) / "params.json").read_text())
        index = int(config["index"])
        history = result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else []
        records[index] = trial_record(points[index], result.metrics or {}, history, result.error, valid_metric)
        log.info("trial %d %s: %s on Ray node %s", index, points[index], records[index]["status"],
                 (result.metrics or {}).get("node", "?"))
    missing = [i for i in range(len(points)) if i not in records]
    if missing:
        raise RuntimeError(f"Ray Tune returned no result for grid points {missing}")
    return [records[i] for i in range(len(points))]
