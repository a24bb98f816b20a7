"""Helpers shared by the stage scripts."""
from __future__ import annotations

import logging

from pipeline.config import section

DATASETS_DIR = "data/datasets"
GRAPHS_DIR = "data/graphs"


def setup_logging() -> None:
    """One line per message, with time and source, on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def needed_datasets(params) -> list[str]:
    """The selected `dataset` followed by the full table's datasets, without repeats."""
    names = [section(params, "dataset"), *section(params, "table.datasets")]
    return list(dict.fromkeys(names))
