"""Stage `train` / `table`: train one model on one dataset, write metrics, curves and checkpoint.

Params: seed, train, eval, dvib, models.<base> (plus `model`/`dataset` for the single-run stage).
`--seed` overrides params.yaml's `seed` (the table runs each combination over `table.seeds`).
Usage: python -m pipeline.stages.train --model FREEDOMa --dataset synthetic [--seed 1000] \
           --record metrics/train_full.json [--metrics metrics/train.json] --checkpoint models/train.pt \
           --curves metrics/curves/train [--resume models/resume/train/state.pt]

--record gets the run's full record (every metric at every K, status, timings); --metrics the
headline numbers DVC compares (pipeline.seed_stats.headline).

The run saves its resumable state to the `--resume` file every `train.checkpoint_every` epochs; a
re-run after a kill continues from it (docs/resume.md). A finished run leaves its outputs in that
file until the caller clears it (the table stage, once every seed is done).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from pipeline.atomic import save_torch, staged_directory, write_json, write_text
from pipeline.config import ExperimentConfig, experiment_config, read_params
from pipeline.dataset import InteractionData, load_mmrec
from pipeline.graphs import load_graphs
from pipeline.models import build_model
from pipeline.resume import ResumeStore, run_key
from pipeline.runtime import configure_runtime, describe_hardware, resolve_device
from pipeline.seed_stats import headline
from pipeline.stages.common import DATASETS_DIR, GRAPHS_DIR, run_stage, setup_logging
from pipeline.trainer import TrainResult, train

log = logging.getLogger("pipeline.stages.train")
RESUME_FILE = Path("models/resume/train/state.pt")  # the single-experiment stage's resumable state
CURVES_SUBDIR = "plots"  # dvclive's per-metric .tsv files, relative to the curves folder


def random_ranking_recall(data: InteractionData, k: int) -> float:
    """Expected test Recall@k of a uniformly random ranking of each user's unmasked items."""
    n_test = np.bincount(data.test.users, minlength=data.n_users)
    n_train_items = np.bincount(np.unique(data.train.users * data.n_items + data.train.items) // data.n_items,
                                minlength=data.n_users)
    users = n_test > 0
    return float(np.mean(np.minimum(1.0, k / (data.n_items - n_train_items[users]))))


def read_curves(folder: Path) -> dict[str, str]:
    """The curve files under `folder` (relative path -> text)."""
    root = folder / CURVES_SUBDIR
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def write_curves(folder: Path, curves: Mapping[str, str]) -> None:
    """Write `read_curves`' record back under `folder`."""
    for name, text in curves.items():
        write_text(folder / name, text)


def train_with_curves(
    cfg: ExperimentConfig, data: InteractionData, objective: nn.Module, device: torch.device, store: ResumeStore,
    state: Mapping[str, Any] | None,
) -> tuple[TrainResult, dict[str, str]]:
    """Train (from `state` when given), logging dvclive curves and saving the resumable state with
    the dvclive step and curves; returns the TrainResult and the final curves."""
    from dvclive import Live  # imported here: it is slow to import and only needed by this stage

    # dvclive's working folder sits beside the state: a killed run's copy is removed by the next run.
    live_dir = store.path.with_name(f".{store.path.stem}-dvclive")
    shutil.rmtree(live_dir, ignore_errors=True)
    live_dir.mkdir(parents=True)
    try:
        if state is not None:
            write_curves(live_dir, state["curves"])
        with Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None, resume=True) as live:
            live.step = state["live_step"] if state is not None else 0

            def on_epoch(epoch):
                live.log_metric("train/loss", epoch.train_loss)
                for name, value in epoch.valid.items():
                    live.log_metric(f"valid/{name}", value)
                live.next_step()

            def save_state(training: dict) -> None:
                store.save({"phase": "training", **training, "live_step": live.step, "curves": read_curves(live_dir)})

            result = train(objective, data, cfg, device, on_epoch=on_epoch, resume_from=state, save_state=save_state)
        return result, read_curves(live_dir)
    finally:
        shutil.rmtree(live_dir, ignore_errors=True)


def write_outputs(outputs: Mapping[str, Any], record_path: Path, checkpoint_path: Path, curves_dir: Path,
                  metrics_path: Path | None) -> None:
    """Write a finished run's curves, checkpoint, full record and (when asked) headline metrics, each atomically."""
    with staged_directory(curves_dir) as staged:
        write_curves(staged, outputs["curves"])
    save_torch(checkpoint_path, outputs["checkpoint"])
    record = outputs["checkpoint"]["metrics"]
    write_json(record_path, record)
    if metrics_path is not None:
        write_json(metrics_path, headline([record]))


def run(
    model: str, dataset: str, record_path: Path, checkpoint_path: Path, curves_dir: Path, resume_path: Path,
    seed: int | None = None, metrics_path: Path | None = None, params: Mapping[str, Any] | None = None,
) -> dict:
    """Train `model` on `dataset` with params.yaml's settings, or `params` when given (seed overridable),
    resuming from `resume_path` when it holds this run's state; write every output atomically."""
    cfg = experiment_config(read_params() if params is None else params, model, dataset)
    if seed is not None:
        cfg = dataclasses.replace(cfg, seed=seed)
    configure_runtime(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    data_dir, graphs_dir = Path(DATASETS_DIR) / dataset, Path(GRAPHS_DIR) / dataset
    store = ResumeStore(resume_path, run_key(cfg, device, [data_dir, graphs_dir]))
    state = store.load()
    if state is not None and state["phase"] == "finished":
        log.info("%s on %s, seed %d: already finished, not retraining", model, dataset, cfg.seed)
        write_outputs(state, record_path, checkpoint_path, curves_dir, metrics_path)
        return state["checkpoint"]["metrics"]

    torch.manual_seed(cfg.seed)
    data = load_mmrec(data_dir)
    graphs = load_graphs(graphs_dir, device)
    objective = build_model(cfg, data, graphs)
    if state is None:
        log.info("training %s on %s (%s), %d parameters", model, dataset, device,
                 sum(p.numel() for p in objective.parameters()))
    else:
        log.info("resuming %s on %s from epoch %d", model, dataset, state["loop"]["next_epoch"])
    result, curves = train_with_curves(cfg, data, objective, device, store, state)

    metrics = {
        "model": model,
        "dataset": dataset,
        "seed": cfg.seed,
        "status": result.status,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": round(result.train_seconds, 3),
        "device": device.type,
        "hardware": describe_hardware(device),
        "random_recall@20": random_ranking_recall(data, 20),
        "valid": result.valid,
        "test": result.test,
    }
    outputs = {"checkpoint": {"config": cfg.to_dict(), "state_dict": result.best_state, "metrics": metrics},
               "curves": curves}
    store.save({"phase": "finished", **outputs})
    write_outputs(outputs, record_path, checkpoint_path, curves_dir, metrics_path)
    log.info("%s on %s: %s at epoch %d, test recall@20 %.4f (random %.4f)", model, dataset, result.status,
             result.best_epoch, result.test.get("recall@20", float("nan")), metrics["random_recall@20"])
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--record", type=Path, required=True, help="the run's full record (JSON)")
    parser.add_argument("--metrics", type=Path, default=None, help="headline metrics file (JSON), for DVC")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--curves", type=Path, required=True)
    parser.add_argument("--resume", type=Path, default=RESUME_FILE, help="file of the resumable training state")
    parser.add_argument("--seed", type=int, default=None, help="overrides params.yaml's seed")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> None:
        run(args.model, args.dataset, args.record, args.checkpoint, args.curves, args.resume, args.seed, args.metrics)
        ResumeStore(args.resume, key="").clear()  # a completed single run has nothing left to resume

    return run_stage(body, log)


if __name__ == "__main__":
    sys.exit(main())
