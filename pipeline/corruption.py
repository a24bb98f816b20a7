"""Seeded corruptions of a dataset's training features (the `corrupt:` of a derived dataset).

Per modality, any combination of (applied in this order):
- `duplicate: f`: round(f·dim) dimensions are overwritten with copies of other, untouched dimensions
  (redundancy);
- `replace: random | mean | zeros` on `replace_fraction` of the items: their features become those of
  another random item, the modality's mean vector, or zeros (missing or wrong content);
- `noise: level` on `fraction` of the items (default all): x + level·σ_d·Z, σ_d the standard
  deviation of dimension d over the items, Z ~ N(0, 1);
- `remove: true`: every item gets the modality's mean vector (how the released data fill items
  without an image), so the modality carries no item-specific information; it excludes the others.
Each kind draws from its own stream of `seed` (per modality), so adding one kind leaves the others'
draws unchanged. Interactions are never touched.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np

from pipeline.config import ConfigError

MODALITIES = ("image", "text")
REPLACEMENTS = ("random", "mean", "zeros")
_STREAMS = {"duplicate": 0, "replace": 1, "noise": 2}


@dataclass(frozen=True)
class ModalityCorruption:
    """What happens to one modality's `[n_items, dim]` feature matrix."""

    noise: float = 0.0
    fraction: float = 1.0
    replace: str | None = None
    replace_fraction: float = 0.0
    duplicate: float = 0.0
    remove: bool = False

    def describe(self) -> str:
        """Short human-readable summary, e.g. 'noise 1σ on 50% of items'."""
        if self.remove:
            return "removed (mean vector)"
        parts = []
        if self.duplicate:
            parts.append(f"{_pct(self.duplicate)} of dims duplicated")
        if self.replace and self.replace_fraction:
            parts.append(f"{_pct(self.replace_fraction)} of items replaced by {_replacement_label(self.replace)}")
        if self.noise:
            parts.append(f"noise {self.noise:g}σ on {_pct(self.fraction)} of items")
        return ", ".join(parts) or "unchanged"


@dataclass(frozen=True)
class CorruptionSpec:
    """The corruption of every modality named in a derived dataset's `corrupt:` mapping."""

    modalities: tuple[tuple[str, ModalityCorruption], ...]

    def describe(self) -> str:
        """'image: noise 1σ on 50% of items; text: removed (mean vector)'."""
        return "; ".join(f"{m}: {c.describe()}" for m, c in self.modalities)


def _pct(share: float) -> str:
    return f"{100 * share:g}%"


def _replacement_label(kind: str) -> str:
    return {"random": "another item's features", "mean": "the mean vector", "zeros": "zeros"}[kind]


def _number(value: Any, where: str, low: float, high: float | None, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    value = float(value)
    above = high is not None and (value >= high if high_open else value > high)
    if value < low or above:
        bound = "" if high is None else (f", below {high:g}" if high_open else f", at most {high:g}")
        raise ConfigError(f"{where}: expected a number >= {low:g}{bound}, got {value:g}")
    return value


def parse_modality(entry: Any, where: str) -> ModalityCorruption:
    """A ModalityCorruption from one modality's mapping; errors name the offending key."""
    if not isinstance(entry, Mapping) or not entry:
        raise ConfigError(f"{where}: expected a non-empty mapping of corruption keys, got {entry!r}")
    keys = [f.name for f in fields(ModalityCorruption)]
    unknown = sorted(set(map(str, entry)) - set(keys))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {keys}")
    values: dict[str, Any] = {}
    if "noise" in entry:
        values["noise"] = _number(entry["noise"], f"{where}.noise", 0.0, None)
    if "fraction" in entry:
        if "noise" not in entry:
            raise ConfigError(f"{where}.fraction: the share of noisy items needs `noise` too")
        values["fraction"] = _number(entry["fraction"], f"{where}.fraction", 0.0, 1.0)
    if ("replace" in entry) != ("replace_fraction" in entry):
        raise ConfigError(f"{where}: `replace` ({'|'.join(REPLACEMENTS)}) and `replace_fraction` go together")
    if "replace" in entry:
        if entry["replace"] not in REPLACEMENTS:
            raise ConfigError(f"{where}.replace: expected one of {list(REPLACEMENTS)}, got {entry['replace']!r}")
        values["replace"] = entry["replace"]
        values["replace_fraction"] = _number(entry["replace_fraction"], f"{where}.replace_fraction", 0.0, 1.0)
    if "duplicate" in entry:
        values["duplicate"] = _number(entry["duplicate"], f"{where}.duplicate", 0.0, 1.0, high_open=True)
    if "remove" in entry:
        if not isinstance(entry["remove"], bool):
            raise ConfigError(f"{where}.remove: expected true/false, got {entry['remove']!r}")
        if entry["remove"] and len(entry) > 1:
            others = sorted(k for k in entry if k != "remove")
            raise ConfigError(f"{where}: `remove: true` replaces the whole modality; drop {others}")
        values["remove"] = entry["remove"]
    return ModalityCorruption(**values)


def parse_corruption(corrupt: Any, where: str) -> CorruptionSpec:
    """A CorruptionSpec from a `corrupt:` mapping {modality: {...}}; errors name the key."""
    if not isinstance(corrupt, Mapping) or not corrupt:
        raise ConfigError(f"{where}: expected a mapping {{image|text: {{...}}}}, got {corrupt!r}")
    unknown = sorted(set(map(str, corrupt)) - set(MODALITIES))
    if unknown:
        raise ConfigError(f"{where}: unknown modality {unknown}; expected some of {list(MODALITIES)}")
    return CorruptionSpec(
        tuple((m, parse_modality(corrupt[m], f"{where}.{m}")) for m in MODALITIES if m in corrupt)
    )


def _rng(seed: int, modality: str, kind: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(MODALITIES.index(modality), _STREAMS[kind])))


def duplicate_dimensions(x: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Copy of `x` with round(share·dim) random dimensions overwritten by copies of the remaining ones."""
    dim = x.shape[1]
    n_copies = min(int(round(share * dim)), dim - 1)
    order = rng.permutation(dim)
    targets, kept = order[:n_copies], order[n_copies:]
    out = x.copy()
    out[:, targets] = x[:, rng.choice(kept, size=n_copies)]
    return out


def replace_items(x: np.ndarray, kind: str, share: float, rng: np.random.Generator) -> np.ndarray:
    """Copy of `x` with round(share·n_items) random items' rows replaced (random other item, mean, zeros)."""
    n_items = x.shape[0]
    chosen = rng.choice(n_items, size=int(round(share * n_items)), replace=False)
    out = x.copy()
    if kind == "mean":
        out[chosen] = x.mean(axis=0)
    elif kind == "zeros":
        out[chosen] = 0.0
    else:
        # A uniform draw among the other n_items - 1 items: shift the draws at or above oneself.
        donors = rng.integers(0, n_items - 1, size=len(chosen))
        donors += donors >= chosen
        out[chosen] = x[donors]
    return out


def add_scaled_noise(x: np.ndarray, level: float, share: float, rng: np.random.Generator) -> np.ndarray:
    """Copy of `x` with level·σ_d·Z added to round(share·n_items) random items (σ_d per dimension)."""
    chosen = np.sort(rng.choice(x.shape[0], size=int(round(share * x.shape[0])), replace=False))
    out = x.copy()
    out[chosen] += level * x.std(axis=0) * rng.standard_normal((len(chosen), x.shape[1]))
    return out


def corrupt_modality(x: np.ndarray, spec: ModalityCorruption, seed: int, modality: str) -> np.ndarray:
    """The corrupted float32 copy of one modality's features (see the module doc for the order)."""
    out = np.asarray(x, dtype=np.float64)
    if spec.remove:
        return np.broadcast_to(out.mean(axis=0), out.shape).astype(np.float32)
    if spec.duplicate:
        out = duplicate_dimensions(out, spec.duplicate, _rng(seed, modality, "duplicate"))
    if spec.replace and spec.replace_fraction:
        out = replace_items(out, spec.replace, spec.replace_fraction, _rng(seed, modality, "replace"))
    if spec.noise and spec.fraction:
        out = add_scaled_noise(out, spec.noise, spec.fraction, _rng(seed, modality, "noise"))
    return out.astype(np.float32)


def corrupt_features(features: Mapping[str, np.ndarray], spec: CorruptionSpec, seed: int) -> dict[str, np.ndarray]:
    """{modality: features} with every modality of `spec` corrupted; the others are returned as they are."""
    out = dict(features)
    for modality, corruption in spec.modalities:
        out[modality] = corrupt_modality(features[modality], corruption, seed, modality)
    return out
