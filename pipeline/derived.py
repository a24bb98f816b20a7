"""Derived datasets: a registered dataset with corrupted training features (`source: derived`).

Registry entry (params.yaml `datasets`):
    synthetic_img50: {source: derived, from: synthetic, seed: 1, corrupt: {image: {noise: 1.0, fraction: 0.5}}}
`from:` names any registered dataset, itself possibly derived; the data stage builds each source
before the datasets derived from it. The derived folder holds the source's interaction file
unchanged (renamed after the new folder) and the corrupted feature files (pipeline/corruption.py).
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from pipeline.atomic import staged_directory
from pipeline.config import ConfigError
from pipeline.corruption import CorruptionSpec, corrupt_features, parse_corruption
from pipeline.dataset import FEATURE_FILES, inter_path, load_mmrec

log = logging.getLogger(__name__)

DERIVED = "derived"
DERIVED_KEYS = ("source", "from", "seed", "corrupt")


@dataclass(frozen=True)
class DerivedSpec:
    """A validated `source: derived` registry entry."""

    name: str
    parent: str
    seed: int
    corruption: CorruptionSpec


def is_derived(spec: Any) -> bool:
    """Whether a registry entry is a derived dataset."""
    return isinstance(spec, Mapping) and spec.get("source") == DERIVED


def source_chain(name: str, registry: Mapping[str, Any]) -> list[str]:
    """[name, its `from:`, that one's `from:`, ...] down to the first dataset that is not derived.

    A `from:` that is not registered, or a chain that comes back to itself, is a ConfigError.
    """
    chain = [name]
    while is_derived(registry.get(chain[-1])):
        parent = registry[chain[-1]].get("from")
        if not isinstance(parent, str) or parent not in registry:
            raise ConfigError(
                f"params.yaml: datasets.{chain[-1]}.from: expected the name of a registered dataset "
                f"({sorted(registry)}), got {parent!r}"
            )
        if parent in chain:
            cycle = " -> ".join([*chain[chain.index(parent):], parent])
            raise ConfigError(f"params.yaml: datasets.{name}: the `from:` chain is a cycle ({cycle})")
        chain.append(parent)
    return chain


def validate_derived_spec(name: str, spec: Any, registry: Mapping[str, Any]) -> DerivedSpec:
    """Check a `source: derived` registry entry (keys, seed, `corrupt:`, the `from:` chain) and type it."""
    where = f"params.yaml: datasets.{name}"
    if not is_derived(spec):
        raise ConfigError(f"{where}: expected a mapping with source: {DERIVED}, got {spec!r}")
    unknown = sorted(set(map(str, spec)) - set(DERIVED_KEYS))
    missing = [k for k in DERIVED_KEYS if k not in spec]
    if unknown or missing:
        raise ConfigError(
            f"{where}: a derived dataset has exactly the keys {list(DERIVED_KEYS)}; "
            f"unknown {unknown}, missing {missing}"
        )
    seed = spec["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{where}.seed: expected an integer, got {seed!r}")
    corruption = parse_corruption(spec["corrupt"], f"{where}.corrupt")
    source_chain(name, registry)
    return DerivedSpec(name=name, parent=spec["from"], seed=seed, corruption=corruption)


def build_order(names: Iterable[str], registry: Mapping[str, Any]) -> list[str]:
    """`names` with their `from:` chains, without repeats, every source before what is derived from it."""
    order: list[str] = []
    for name in names:
        for member in reversed(source_chain(name, registry)):
            if member not in order:
                order.append(member)
    return order


def build_derived(spec: DerivedSpec, root: str | Path) -> Path:
    """Write root/<name> from the already built root/<parent>: same interactions, corrupted features.

    The folder is validated with load_mmrec before it replaces any earlier copy.
    """
    root = Path(root)
    parent = load_mmrec(root / spec.parent)
    features = corrupt_features(parent.features(), spec.corruption, spec.seed)
    target = root / spec.name
    with staged_directory(target) as staged:
        shutil.copyfile(inter_path(root / spec.parent), inter_path(staged))
        for modality, file in FEATURE_FILES.items():
            np.save(staged / file, features[modality])
        load_mmrec(staged)
    log.info("%s: derived from %s (seed %d): %s", spec.name, spec.parent, spec.seed, spec.corruption.describe())
    return target


def lineage(datasets: Iterable[str], registry: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """{derived dataset: (the non-derived dataset at the end of its chain, what was corrupted)} of `datasets`."""
    out = {}
    for name in datasets:
        if is_derived(registry.get(name)):
            chain = source_chain(name, registry)
            steps = [validate_derived_spec(n, registry[n], registry).corruption.describe()
                     for n in reversed(chain[:-1])]
            out[name] = (chain[-1], " then ".join(steps))
    return out
