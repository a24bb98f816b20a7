"""Stage `robustness`: test metrics of one table cell's checkpoints under test-time feature perturbations.

Params: robustness (seed, noise_levels, remove_modalities, drop_fractions, model_overrides).
Usage: python -m pipeline.stages.robustness --dataset synthetic \
           --checkpoints models/table/synthetic/VBPRc --output metrics/robustness/synthetic/VBPRc

The checkpoint's objective (base model or DVIB wrapper) is rebuilt from its saved config, with
`robustness.model_overrides.<BASE>` merged into the model's constructor params (for a model
whose scorer would otherwise reuse a representation cached during training), and its weights
loaded. Condition `noise@0` is the clean model: it must reproduce the checkpoint's test metrics.
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
from torch import nn

from pipeline.atomic import staged_directory, write_json
from pipeline.config import ConfigError, ExperimentConfig, read_params, section
from pipeline.dataset import InteractionData, load_mmrec
from pipeline.evaluation import Evaluator
from pipeline.graphs import Graphs, load_graphs
from pipeline.model_names import parse_model_name
from pipeline.models import build_model
from pipeline.models.dvib import DVIB
from pipeline.robustness import conditions_from_params, evaluate_conditions, scores_respond_to_features
from pipeline.stages.common import DATASETS_DIR, GRAPHS_DIR, run_stage, setup_logging
from pipeline.runtime import configure_runtime, describe_hardware, resolve_device

log = logging.getLogger("pipeline.stages.robustness")
SENSITIVITY_USERS = 256  # test users whose scores decide whether the features reach the ranking


def restore_objective(
    checkpoint: Mapping[str, Any], data: InteractionData, graphs: Graphs, overrides: Mapping[str, Any]
) -> tuple[nn.Module, ExperimentConfig]:
    """Rebuild the trained objective of a table checkpoint, with the base's constructor overrides applied."""
    cfg = ExperimentConfig.from_dict(checkpoint["config"])
    base, _variant = parse_model_name(cfg.model)
    extra = overrides.get(base) or {}
    if not isinstance(extra, Mapping):
        raise ConfigError(f"params.yaml: robustness.model_overrides.{base}: expected a mapping")
    cfg = dataclasses.replace(cfg, model_params={**cfg.model_params, **extra})
    objective = build_model(cfg, data, graphs)
    objective.load_state_dict(checkpoint["state_dict"])
    return objective, cfg


def base_model(objective: nn.Module) -> nn.Module:
    """The base recommender inside a DVIB wrapper (or the objective itself)."""
    return objective.base if isinstance(objective, DVIB) else objective


def evaluate_checkpoint(
    checkpoint: Mapping[str, Any], data: InteractionData, graphs: Graphs, robustness: Mapping[str, Any], device
) -> dict:
    """The robustness record of one checkpoint: metrics per condition and two sanity flags."""
    conditions = conditions_from_params(robustness)
    overrides = robustness["model_overrides"] or {}
    objective, cfg = restore_objective(checkpoint, data, graphs, overrides)
    objective.to(device).eval()
    features = base_model(objective).item_features()
    evaluator = Evaluator(data, data.test, cfg.eval.topk, cfg.eval.batch_size, device)
    results = evaluate_conditions(objective, features, conditions, evaluator.evaluate, int(robustness["seed"]))

    stored = checkpoint["metrics"]["test"]
    clean = results["noise@0"]
    gap = max((abs(clean[k] - stored[k]) for k in stored), default=0.0)
    if gap:
        log.warning("%s: clean re-evaluation differs from the checkpoint's test metrics by up to %.3g "
                    "(a cached or stochastic scorer?)", cfg.model, gap)
    users = torch.as_tensor(np.unique(data.test.users)[:SENSITIVITY_USERS], device=device)
    responds = scores_respond_to_features(objective, features, users)
    if not responds:
        log.warning("%s: scores do not change when the item features do; every condition equals the clean one",
                    cfg.model)
    return {
        "model": cfg.model,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "device": torch.device(device).type,
        "hardware": describe_hardware(torch.device(device)),
        "perturbation_seed": int(robustness["seed"]),
        "model_overrides": dict(overrides.get(parse_model_name(cfg.model)[0]) or {}),
        "scores_respond_to_features": responds,
        "clean_matches_checkpoint": gap == 0.0,
        "clean_max_abs_difference": gap,
        "conditions": results,
    }


def run(dataset: str, checkpoint_dir: Path, output_dir: Path) -> list[dict]:
    """Evaluate every seed<k>.pt checkpoint of a folder under params.yaml's `robustness` conditions;
    write one seed<k>.json per checkpoint into `output_dir` (replaced as a whole)."""
    robustness = section(read_params(), "robustness")
    checkpoints = sorted(checkpoint_dir.glob("seed*.pt"))
    if not checkpoints:
        raise FileNotFoundError(f"{checkpoint_dir}: no seed<k>.pt checkpoints; run the table stage first")
    data = load_mmrec(Path(DATASETS_DIR) / dataset)
    records = []
    with staged_directory(output_dir) as staged:
        for i, path in enumerate(checkpoints, start=1):
            log.info("[%d/%d] %s", i, len(checkpoints), path)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            train_cfg = checkpoint["config"]["train"]
            configure_runtime(int(train_cfg["threads"]))
            device = resolve_device(train_cfg["device"])
            graphs = load_graphs(Path(GRAPHS_DIR) / dataset, device)
            record = evaluate_checkpoint(checkpoint, data, graphs, robustness, device)
            write_json(staged / f"{path.stem}.json", record)
            log.info("%s seed %d on %s: test recall@20 %s", record["model"], record["seed"], dataset,
                     ", ".join(f"{name} {m['recall@20']:.4f}" for name, m in record["conditions"].items()))
            records.append(record)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--checkpoints", type=Path, required=True, help="folder of seed<k>.pt checkpoints")
    parser.add_argument("--output", type=Path, required=True, help="folder for the seed<k>.json records")
    args = parser.parse_args(argv)
    setup_logging()
    return run_stage(lambda: run(args.dataset, args.checkpoints, args.output), log)


if __name__ == "__main__":
    sys.exit(main())
