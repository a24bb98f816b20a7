"""Stage `graphs`: build Â, the edge index and the kNN item graphs for every needed dataset.

Params: dataset, table.datasets, graphs.knn_k.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from pipeline.atomic import staged_directory
from pipeline.config import read_params, section
from pipeline.dataset import load_mmrec
from pipeline.graphs import write_graphs
from pipeline.stages.common import DATASETS_DIR, GRAPHS_DIR, needed_datasets, run_stage, setup_logging

log = logging.getLogger("pipeline.stages.graphs")


def run() -> None:
    params = read_params()
    knn_k = int(section(params, "graphs.knn_k"))
    for name in needed_datasets(params):
        data = load_mmrec(Path(DATASETS_DIR) / name)
        with staged_directory(Path(GRAPHS_DIR) / name) as staged:
            write_graphs(staged, data, knn_k)


def main() -> int:
    setup_logging()
    return run_stage(run, log)


if __name__ == "__main__":
    sys.exit(main())
