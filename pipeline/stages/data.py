"""Stage `data`: make every needed dataset available under data/datasets/<name>/, validated.

Params: dataset, table.datasets, datasets (the registry), synthetic. Datasets derived from others
(`source: derived`) are built after their sources, which are made available too.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from pipeline.amazon.build import build_amazon_dataset
from pipeline.atomic import staged_directory
from pipeline.config import ConfigError, SyntheticConfig, from_mapping, read_params, section
from pipeline.dataset import load_mmrec
from pipeline.derived import build_derived, build_order, is_derived, validate_derived_spec
from pipeline.stages.common import DATASETS_DIR, needed_datasets, run_stage, setup_logging
from pipeline.synthetic import write_synthetic

log = logging.getLogger("pipeline.stages.data")


def prepare_dataset(name: str, spec: dict, params: dict, root: Path) -> None:
    """Produce data/datasets/<name> from its registry entry, validating before it is moved in."""
    registry = section(params, "datasets")
    if is_derived(spec):
        build_derived(validate_derived_spec(name, spec, registry), root)
        return
    source = spec.get("source")
    if source == "synthetic":
        synthetic = section(params, "synthetic")
        cfg = from_mapping(SyntheticConfig, {k: v for k, v in synthetic.items() if k != "seed"}, "synthetic")
        with staged_directory(root / name) as staged:
            write_synthetic(staged, cfg, seed=int(synthetic["seed"]))
            load_mmrec(staged)
        return
    if source == "amazon":
        build_amazon_dataset(name, spec, root)
        return
    from pipeline.sources.fetch import fetch_dataset  # network sources (gdown, url, local path)

    fetch_dataset(name, spec, root)


def run() -> None:
    params = read_params()
    registry = section(params, "datasets")
    root = Path(DATASETS_DIR)
    for name in needed_datasets(params):
        if name not in registry:
            raise ConfigError(f"params.yaml: dataset {name!r} is not in the `datasets` registry ({sorted(registry)})")
    order = build_order(needed_datasets(params), registry)
    for name in order:  # every derived entry checked before anything is built or downloaded
        if is_derived(registry[name]):
            validate_derived_spec(name, registry[name], registry)
    for name in order:
        prepare_dataset(name, registry[name], params, root)


def main() -> int:
    setup_logging()
    return run_stage(run, log)


if __name__ == "__main__":
    sys.exit(main())
