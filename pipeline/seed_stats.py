"""Statistics over the seeds of one table cell, shared by the table stage and the report."""
from __future__ import annotations

import math
from typing import Sequence


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
