"""Measurements of the tune stage on the synthetic default (numbers quoted in docs/tuning.md).

  python benchmarks/tune_measure.py prepare --project /tmp/tune_bench      # synthetic data + graphs there
  python benchmarks/tune_measure.py cells   --project /tmp/tune_bench      # the 15 default cells, wall time each
  python benchmarks/tune_measure.py speedup --project /tmp/tune_bench      # 8 trials of one cell: 1 vs 2 workers
  python benchmarks/tune_measure.py asha    --project /tmp/tune_bench      # ASHA against the exhaustive grid
  python benchmarks/tune_measure.py standin --project /tmp/tune_baby --epochs 2   # baby's reference grids, stand-in data

Each mode runs the real stage code (`pipeline.stages.tune.tune_cell`) in the project folder and
writes a JSON next to it. Run from the repository root; the machine's load average is recorded.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import SyntheticConfig, from_mapping, read_params  # noqa: E402
from pipeline.tuning_config import expand_grid  # noqa: E402

ASHA_GRIDS = {  # >= 12 points per cell, on three cells
    "FREEDOM": {"models.FREEDOM.reg_weight": [0.0, 0.00001, 0.0001, 0.001],
                "train.learning_rate": [0.0005, 0.001, 0.005]},
    "VBPR": {"models.VBPR.reg_weight": [1.0, 0.1, 0.01, 0.001, 0.0001, 0.00001],
             "train.learning_rate": [0.001, 0.005]},
    "BM3": {"models.BM3.n_layers": [1, 2], "models.BM3.reg_weight": [0.1, 0.01],
            "models.BM3.dropout": [0.3, 0.5, 0.7]},
}


def load() -> float:
    return os.getloadavg()[0]


def prepare(project: Path, params: dict) -> None:
    """The default synthetic dataset and its graphs under `project`/data."""
    from pipeline.dataset import load_mmrec
    from pipeline.graphs import write_graphs
    from pipeline.synthetic import write_synthetic

    syn = dict(params["synthetic"])
    seed = syn.pop("seed")
    data_dir = project / "data" / "datasets" / "synthetic"
    write_synthetic(data_dir, from_mapping(SyntheticConfig, syn, "synthetic"), seed=seed)
    write_graphs(project / "data" / "graphs" / "synthetic", load_mmrec(data_dir), params["graphs"]["knn_k"])


def timed_cell(model: str, params: dict) -> tuple[float, dict]:
    from pipeline.stages.tune import tune_cell

    start = time.perf_counter()
    outcome = tune_cell(model, "synthetic", params)
    return time.perf_counter() - start, outcome


def cells(params: dict, models: list[str] | None) -> dict:
    """Every default cell (or `models`), one stage run each (Ray started and stopped per cell, as under dvc repro)."""
    out = {}
    for base in params["table"]["bases"]:
        for variant in params["table"]["variants"]:
            model = base + (variant or "")
            if models and model not in models:
                continue
            before = load()
            seconds, outcome = timed_cell(model, params)
            out[model] = {"seconds": round(seconds, 1), "load_before": before, "load_after": load(),
                          "trial_seconds": [t["seconds"] for t in outcome["trials"]], "best": outcome["best"]["params"]}
            print(model, out[model], flush=True)
    out["total_seconds"] = round(sum(v["seconds"] for v in out.values()), 1)
    return out


def speedup(params: dict, epochs: int, model: str = "FREEDOM", repeats: int = 3) -> dict:
    """Wall time of an 8-trial grid of one cell with 1 and with 2 Ray workers (CPUs), alternating."""
    params = copy.deepcopy(params)
    params["train"]["epochs"] = epochs
    params["tune"]["grids"]["synthetic"][model] = {"models.FREEDOM.reg_weight": [0.0, 0.00001, 0.0001, 0.001],
                                                    "train.learning_rate": [0.001, 0.005]}
    times: dict[int, list[float]] = {1: [], 2: []}
    loads: list[float] = []
    for _ in range(repeats):
        for workers in (1, 2):
            params["tune"]["num_cpus"] = workers
            loads.append(load())
            times[workers].append(round(timed_cell(model, params)[0], 1))
            print(workers, times[workers][-1], loads[-1], flush=True)
    median = {w: sorted(t)[len(t) // 2] for w, t in times.items()}
    return {"seconds": times, "median": median, "speedup": round(median[1] / median[2], 2), "load": loads}


def asha(params: dict, epochs: int, grace_period: int) -> dict:
    """Each ASHA_GRIDS cell exhaustively and under ASHA: the winners and the share of epochs ASHA trains."""
    params = copy.deepcopy(params)
    params["train"]["epochs"] = epochs
    params["tune"]["asha"]["grace_period"] = grace_period
    out = {}
    for model, grid in ASHA_GRIDS.items():
        params["tune"]["grids"]["synthetic"][model] = grid
        runs = {}
        for scheduler in (None, "asha"):
            params["tune"]["scheduler"] = scheduler
            seconds, outcome = timed_cell(model, params)
            runs[scheduler or "grid"] = {
                "seconds": round(seconds, 1), "best": outcome["best"]["params"],
                "best_valid": outcome["best"]["valid"]["recall@20"], "best_test": outcome["best"]["test"]["recall@20"],
                "epochs": sum(t["epochs_run"] or 0 for t in outcome["trials"]),
                "stopped": sum(t["status"] == "stopped" for t in outcome["trials"]),
            }
        out[model] = {"points": len(expand_grid(grid)), **runs, "same_winner": runs["grid"]["best"] == runs["asha"]["best"],
                      "epoch_fraction": round(runs["asha"]["epochs"] / runs["grid"]["epochs"], 3)}
        print(model, out[model], flush=True)
    return out


def standin(project: Path, params: dict, epochs: int, models: list[str]) -> dict:
    """The reference grids of `baby` on a small stand-in folder (the synthetic generator's output)."""
    from pipeline.dataset import load_mmrec
    from pipeline.graphs import write_graphs
    from pipeline.synthetic import write_synthetic
    from pipeline.stages.tune import tune_cell

    syn = dict(params["synthetic"]) | {"n_users": 200, "n_items": 150}
    seed = syn.pop("seed")
    data_dir = project / "data" / "datasets" / "baby"
    write_synthetic(data_dir, from_mapping(SyntheticConfig, syn, "synthetic"), seed=seed)
    write_graphs(project / "data" / "graphs" / "baby", load_mmrec(data_dir), params["graphs"]["knn_k"])
    params = copy.deepcopy(params)
    params["train"]["epochs"] = epochs
    out = {}
    for model in models:
        start = time.perf_counter()
        outcome = tune_cell(model, "baby", params)
        out[model] = {"seconds": round(time.perf_counter() - start, 1), "trials": len(outcome["trials"]),
                      "statuses": sorted({t["status"] for t in outcome["trials"]}), "best": outcome["best"]["params"]}
        print(model, out[model], flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["prepare", "cells", "speedup", "asha", "standin"])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=20, help="asha, speedup: the shortened epoch budget")
    parser.add_argument("--models", nargs="*", help="cells: only these cells")
    parser.add_argument("--grace-period", type=int, default=5, help="asha: epochs before a trial may be stopped")
    args = parser.parse_args()
    params = read_params(ROOT / "params.yaml")
    args.project.mkdir(parents=True, exist_ok=True)
    if args.mode == "prepare":
        prepare(args.project, params)
        return 0
    os.chdir(args.project)
    result = {"cells": lambda: cells(params, args.models), "speedup": lambda: speedup(params, args.epochs),
              "asha": lambda: asha(params, args.epochs, args.grace_period),
              "standin": lambda: standin(args.project, params, args.epochs, args.models or ["FREEDOM", "FREEDOMa"])}[args.mode]()
    (args.project / f"tune_{args.mode}{'_' + '_'.join(args.models) if args.models else ''}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
