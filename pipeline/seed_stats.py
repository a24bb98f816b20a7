"""Statistics over the seeds of one table cell, shared by the table stage and the report."""
from __future__ import annotations

import math
from typing import Mapping, Sequence


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def as_number(value: float) -> int | float:
    """`value` as an int when it is integral (a mean best epoch of 38.0 prints as 38)."""
    return int(value) if float(value).is_integer() else value


HEADLINE_METRICS = ("recall@20", "ndcg@20")


def headline(runs: Sequence[Mapping]) -> dict:
    """The few numbers a person compares across commits (`dvc metrics show/diff`, `dvc exp show`):
    test Recall/NDCG@20 (mean, and std when there are several seeds), validation Recall/NDCG@20 and
    the best and last epochs, over the run records of one cell."""
    n = len(runs)
    stats = {split: {m: mean_std([r[split][m] for r in runs]) for m in HEADLINE_METRICS if m in runs[0][split]}
             for split in ("test", "valid")}
    out: dict = {"test": {m: s[0] for m, s in stats["test"].items()}}
    if n > 1:
        out["test_std"] = {m: s[1] for m, s in stats["test"].items()}
    out["valid"] = {m: s[0] for m, s in stats["valid"].items()}
    for key in ("best_epoch", "epochs_run"):
        out[key] = as_number(round(mean_std([float(r[key]) for r in runs])[0], 2))
    if n > 1:
        out["seeds"] = n
    return out
