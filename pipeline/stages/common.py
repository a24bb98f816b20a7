"""Helpers shared by the stage scripts."""
from __future__ import annotations

import argparse
import logging
import signal
from contextlib import contextmanager
from typing import Callable, Iterator

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


class StageInterrupted(KeyboardInterrupt):
    """SIGTERM received (DVC, a scheduler or a preemption stopping the stage)."""


def interrupt_on_sigterm(signum, _frame) -> None:
    """SIGTERM handler: raise StageInterrupted, so that `finally` blocks and atomic writes clean up."""
    raise StageInterrupted(f"received signal {signum}")


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGTERM and SIGINT back for the body (several outputs written as one step); a signal that
    arrives meanwhile is raised again, to the stage's own handlers, when the body ends."""
    held: list[int] = []
    # Handlers, not a signal mask: a mask is per thread, and Ray and torch run threads of their own.
    previous = {signum: signal.signal(signum, lambda received, _frame: held.append(received))
                for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            signal.raise_signal(held[0])


def run_stage(body: Callable[[], object], log: logging.Logger) -> int:
    """Run a stage body; a user error (bad params, data or environment) or a missing input becomes one
    logged line and exit 1, Ctrl-C or SIGTERM exit 130. Anything else is a bug and keeps its traceback.
    Outputs are written atomically, so an interrupted stage leaves each one as it was or complete."""
    previous = signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    try:
        body()
    except (UserError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt as exc:
        log.error("interrupted (%s): no output half-written; re-run to go on from what was finished", exc)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
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
