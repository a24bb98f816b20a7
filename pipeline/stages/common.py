"""Helpers shared by the stage scripts."""
from __future__ import annotations

import argparse
import logging
from typing import Callable

from pipeline.config import section
from pipeline.errors import UserError

DATASETS_DIR = "data/datasets"
GRAPHS_DIR = "data/graphs"


def setup_logging() -> None:
    """One line per message, with time and source, on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def needed_datasets(params) -> list[str]:
    """The selected `dataset` followed by the full table's datasets, without repeats."""
    names = [section(params, "dataset"), *section(params, "table.datasets")]
    return list(dict.fromkeys(names))


def run_stage(body: Callable[[], object], log: logging.Logger) -> int:
    """Run a stage body; a user error (bad params, data or environment) or a missing input becomes one
    logged line and exit 1. Anything else is a bug and keeps its traceback."""
    try:
        body()
    except (UserError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 1
    return 0


def run_cell_stage(body: Callable[[str, str], object], log: logging.Logger, doc: str,
                   argv: list[str] | None = None) -> int:
    """Entry point of a stage over one table cell: parse `--model` and `--dataset`, then run
    `body(model, dataset)` through run_stage."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    args = parser.parse_args(argv)
    setup_logging()
    return run_stage(lambda: body(args.model, args.dataset), log)
