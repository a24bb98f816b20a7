"""Stage `table@<dataset>-<base>-<variant>`: one cell of the full table, trained once per seed.

Params: table.seeds, train, eval, dvib, models.<base>, with the cell's tuned point applied on top
(metrics/tune/<dataset>/<model>.best.yaml, written by the tune stage). For each seed k of `table.seeds`
it writes models/table/<dataset>/<model>/seed<k>.pt, metrics/table/<dataset>/<model>/seed<k>.json and the
curves under metrics/curves/<dataset>/<model>/seed<k>; then metrics/<dataset>/<model>.json with
the mean and standard deviation of every test metric over the seeds (what `dvc metrics diff` shows).
Usage: python -m pipeline.stages.table --model FREEDOMa --dataset synthetic
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.config import ConfigError, read_params, section
from pipeline.report import mean_std
from pipeline.stages import train
from pipeline.stages.common import run_stage, setup_logging
from pipeline.tuning import apply_overrides, tuned_params

log = logging.getLogger("pipeline.stages.table")


def seed_summary(runs: list[dict]) -> dict:
    """Mean and sample std over seeds of each test and validation metric, plus each run's outcome."""
    first = runs[0]
    stats = lambda split: {m: mean_std([r[split][m] for r in runs]) for m in first[split]}  # noqa: E731
    test, valid = stats("test"), stats("valid")
    return {
        "model": first["model"],
        "dataset": first["dataset"],
        "seeds": [r["seed"] for r in runs],
        "status": ",".join(sorted({r["status"] for r in runs})),
        "best_epoch": mean_std([float(r["best_epoch"]) for r in runs])[0],
        "train_seconds": mean_std([r["train_seconds"] for r in runs])[0],
        "random_recall@20": first["random_recall@20"],
        "test": {m: s[0] for m, s in test.items()},
        "test_std": {m: s[1] for m, s in test.items()},
        "valid": {m: s[0] for m, s in valid.items()},
    }


def run(model: str, dataset: str) -> dict:
    """Train `model` on `dataset` once per seed of `table.seeds` and write the seed summary."""
    params = read_params()
    seeds = section(params, "table.seeds")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"params.yaml: table.seeds: expected a non-empty list of integers, got {seeds!r}")
    tuned = tuned_params(dataset, model)
    log.info("%s on %s at its tuned point %s", model, dataset, tuned)
    params = apply_overrides(params, tuned)
    runs = []
    for seed in seeds:
        runs.append(
            train.run(
                model,
                dataset,
                metrics_path=Path("metrics/table") / dataset / model / f"seed{seed}.json",
                checkpoint_path=Path("models/table") / dataset / model / f"seed{seed}.pt",
                curves_dir=Path("metrics/curves") / dataset / model / f"seed{seed}",
                seed=seed,
                params=params,
            )
        )
    summary = seed_summary(runs)
    write_json(Path("metrics") / dataset / f"{model}.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    args = parser.parse_args(argv)
    setup_logging()
    return run_stage(lambda: run(args.model, args.dataset), log)


if __name__ == "__main__":
    sys.exit(main())
