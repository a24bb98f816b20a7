"""Stage `train` / `table`: train one model on one dataset, write metrics, curves and checkpoint.

Params: seed, train, eval, dvib, models.<base> (plus `model`/`dataset` for the single-run stage).
`--seed` overrides params.yaml's `seed` (the table runs each combination over `table.seeds`).
Usage: python -m pipeline.stages.train --model FREEDOMa --dataset synthetic [--seed 1000] \
           --metrics metrics/train.json --checkpoint models/train.pt --curves metrics/curves/train
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from pipeline.atomic import save_torch, staged_directory, write_json
from pipeline.config import experiment_config, read_params
from pipeline.dataset import InteractionData, load_mmrec
from pipeline.graphs import load_graphs
from pipeline.models import build_model
from pipeline.stages.common import DATASETS_DIR, GRAPHS_DIR, run_stage, setup_logging
from pipeline.trainer import configure_runtime, resolve_device, train

log = logging.getLogger("pipeline.stages.train")


def random_ranking_recall(data: InteractionData, k: int) -> float:
    """Expected test Recall@k of a uniformly random ranking of each user's unmasked items."""
    n_test = np.bincount(data.test.users, minlength=data.n_users)
    n_train_items = np.bincount(np.unique(data.train.users * data.n_items + data.train.items) // data.n_items,
                                minlength=data.n_users)
    users = n_test > 0
    return float(np.mean(np.minimum(1.0, k / (data.n_items - n_train_items[users]))))


def run(
    model: str, dataset: str, metrics_path: Path, checkpoint_path: Path, curves_dir: Path, seed: int | None = None,
    params: Mapping[str, Any] | None = None,
) -> dict:
    """Train `model` on `dataset` with params.yaml's settings, or `params` when given (seed overridable);
    write every output atomically."""
    from dvclive import Live  # imported here: it is slow to import and only needed by this stage

    cfg = experiment_config(read_params() if params is None else params, model, dataset)
    if seed is not None:
        cfg = dataclasses.replace(cfg, seed=seed)
    configure_runtime(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.seed)
    data = load_mmrec(Path(DATASETS_DIR) / dataset)
    graphs = load_graphs(Path(GRAPHS_DIR) / dataset, device)
    objective = build_model(cfg, data, graphs)
    log.info("training %s on %s (%s), %d parameters", model, dataset, device,
             sum(p.numel() for p in objective.parameters()))

    with staged_directory(curves_dir) as staged_curves:
        with Live(dir=str(staged_curves), dvcyaml=None, save_dvc_exp=False, report=None) as live:
            def on_epoch(epoch):
                live.log_metric("train/loss", epoch.train_loss)
                for name, value in epoch.valid.items():
                    live.log_metric(f"valid/{name}", value)
                live.next_step()

            result = train(objective, data, cfg, device, on_epoch=on_epoch)
        # Keep the curves only: dvclive's own metrics.json duplicates the metrics file below.
        (staged_curves / "metrics.json").unlink(missing_ok=True)

    metrics = {
        "model": model,
        "dataset": dataset,
        "seed": cfg.seed,
        "status": result.status,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": round(result.train_seconds, 3),
        "device": device.type,
        "random_recall@20": random_ranking_recall(data, 20),
        "valid": result.valid,
        "test": result.test,
    }
    save_torch(checkpoint_path, {"config": cfg.to_dict(), "state_dict": result.best_state, "metrics": metrics})
    write_json(metrics_path, metrics)
    log.info("%s on %s: %s at epoch %d, test recall@20 %.4f (random %.4f)", model, dataset, result.status,
             result.best_epoch, result.test.get("recall@20", float("nan")), metrics["random_recall@20"])
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--curves", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=None, help="overrides params.yaml's seed")
    args = parser.parse_args(argv)
    setup_logging()
    return run_stage(lambda: run(args.model, args.dataset, args.metrics, args.checkpoint, args.curves, args.seed), log)


if __name__ == "__main__":
    sys.exit(main())
