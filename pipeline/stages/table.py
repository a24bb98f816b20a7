"""Stage `table@<dataset>-<base>-<variant>`: one cell of the full table, trained once per seed.

Params: table.seeds, train, eval, dvib, models.<base>, with the cell's tuned point applied on top
(metrics/tune/<dataset>/<model>.best.yaml, written by the tune stage). For each seed k of `table.seeds`
it writes models/table/<dataset>/<model>/seed<k>.pt, metrics/table/<dataset>/<model>/seed<k>.json and the
curves under metrics/curves/<dataset>/<model>/seed<k>; then metrics/<dataset>/<model>.json with
the cell's headline numbers over the seeds (pipeline.seed_stats.headline: what `dvc metrics diff`
shows; the report has every metric).
Each seed's resumable state lives in models/resume/table/<dataset>/<model>/seed<k>.pt until the
whole cell is done: a re-run after a kill resumes the interrupted seed and does not retrain the
seeds that had finished.
Usage: python -m pipeline.stages.table --model FREEDOMa --dataset synthetic
"""
from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.config import read_params, table_config
from pipeline.seed_stats import headline
from pipeline.stages import train
from pipeline.stages.common import run_cell_stage
from pipeline.tuning_config import apply_overrides, tuned_params

log = logging.getLogger("pipeline.stages.table")
RESUME_DIR = Path("models/resume/table")


def run(model: str, dataset: str) -> dict:
    """Train `model` on `dataset` at its tuned point once per seed of `table.seeds` and write the cell's
    headline metrics."""
    params = read_params()
    seeds = table_config(params).seeds
    tuned = tuned_params(dataset, model)
    log.info("%s on %s at its tuned point %s", model, dataset, tuned)
    params = apply_overrides(params, tuned)
    runs = []
    for i, seed in enumerate(seeds, start=1):
        log.info("[%d/%d] %s on %s, seed %d", i, len(seeds), model, dataset, seed)
        runs.append(
            train.run(
                model,
                dataset,
                record_path=Path("metrics/table") / dataset / model / f"seed{seed}.json",
                checkpoint_path=Path("models/table") / dataset / model / f"seed{seed}.pt",
                curves_dir=Path("metrics/curves") / dataset / model / f"seed{seed}",
                resume_path=RESUME_DIR / dataset / model / f"seed{seed}.pt",
                seed=seed,
                params=params,
            )
        )
    summary = headline(runs)
    write_json(Path("metrics") / dataset / f"{model}.json", summary)
    # The cell is complete: nothing is left to resume (the emptied folder stays: DVC persists it).
    cell_dir = RESUME_DIR / dataset / model
    shutil.rmtree(cell_dir, ignore_errors=True)
    cell_dir.mkdir(parents=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_cell_stage(run, log, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
