"""The registry entry of an `amazon` source: raw file paths and every build setting, all explicit."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.config import ConfigError

AMAZON_KEYS = ("source", "reviews", "meta", "images", "k_core", "split_seed", "text_batch_size", "device")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class AmazonSource:
    """Raw review, metadata and image-feature files of one Amazon category and how to build from them."""

    name: str
    reviews: Path
    meta: Path
    images: Path
    k_core: int  # minimum interactions per user and per item
    split_seed: int  # breaks ties between a user's reviews with the same timestamp
    text_batch_size: int  # sentences per sentence-transformers batch
    device: str  # auto = CUDA when present, else CPU
    kind: str = "amazon"

    def describe(self) -> str:
        """Human-readable origin, for messages."""
        return f"raw Amazon files {self.reviews}, {self.meta}, {self.images}"


def _positive_int(spec: Mapping[str, Any], key: str, where: str, minimum: int) -> int:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}.{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def resolve_amazon(name: str, spec: Mapping[str, Any], where: str) -> AmazonSource:
    """Check an `amazon` registry entry: every key in AMAZON_KEYS is required, no other is allowed."""
    unknown = sorted(set(spec) - set(AMAZON_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; an amazon source takes {list(AMAZON_KEYS)}")
    missing = [k for k in AMAZON_KEYS if k not in spec]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}; an amazon source takes {list(AMAZON_KEYS)}")
    paths = {}
    for key in ("reviews", "meta", "images"):
        value = spec[key]
        if not (isinstance(value, str) and value.strip()):
            raise ConfigError(f"{where}.{key}: expected the path of a file, got {value!r}")
        paths[key] = Path(value).expanduser()
    if spec["device"] not in DEVICES:
        raise ConfigError(f"{where}.device: expected one of {list(DEVICES)}, got {spec['device']!r}")
    return AmazonSource(
        name=name,
        **paths,
        k_core=_positive_int(spec, "k_core", where, 3),  # the split needs 3 rows per user
        split_seed=_positive_int(spec, "split_seed", where, 0),
        text_batch_size=_positive_int(spec, "text_batch_size", where, 1),
        device=spec["device"],
    )
