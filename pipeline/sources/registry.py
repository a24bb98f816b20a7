"""The dataset registry (`datasets` in params.yaml): which sources exist and which keys each needs.

Each source kind has one resolver in `RESOLVERS` that checks a registry entry and returns a typed
description of it; adding a kind is one line there.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

from pipeline.amazon.spec import resolve_amazon
from pipeline.config import ConfigError
from pipeline.dataset import FEATURE_FILES

DRIVE_FOLDER_URL = "https://drive.google.com/drive/folders/"
DOWNLOAD_KEYS = ("source", "folder", "url", "path", "expect")
EXPECT_KEYS = ("users", "items", "interactions")


@dataclass(frozen=True)
class DatasetSource:
    """Where one dataset comes from: kind 'gdrive' (folder id), 'url' or 'path', plus its published sizes."""

    name: str
    kind: str
    location: str
    drive_folder: str | None  # MMRec's Drive folder, named in the manual instructions
    expect: Mapping[str, int] | None

    def describe(self) -> str:
        """Human-readable origin, for messages."""
        if self.kind == "gdrive":
            return f"Google Drive folder {DRIVE_FOLDER_URL}{self.location} (subfolder {self.name}/)"
        if self.kind == "url":
            return f"mirror {self.location}"
        return f"local folder {self.location}"


@dataclass(frozen=True)
class SyntheticSource:
    """The embedded generator; its settings are the `synthetic` params section."""

    name: str
    kind: str = "synthetic"


def dataset_files(name: str) -> tuple[str, ...]:
    """The files of an MMRec dataset folder, in a fixed order."""
    return (f"{name}.inter", *FEATURE_FILES.values())


def check_keys(spec: Any, allowed: tuple[str, ...], where: str) -> Mapping[str, Any]:
    """Require `spec` to be a mapping whose keys are among `allowed`; returns it."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys {list(allowed)}, got {spec!r}")
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {list(allowed)}")
    return spec


def resolve_synthetic(name: str, spec: Mapping[str, Any], where: str) -> SyntheticSource:
    """A `source: synthetic` entry takes no other key."""
    check_keys(spec, ("source",), where)
    return SyntheticSource(name)


def resolve_download(name: str, spec: Mapping[str, Any], where: str) -> DatasetSource:
    """A gdrive, url or path entry: `path` wins over `url`, which wins over `source`."""
    check_keys(spec, DOWNLOAD_KEYS, where)
    source = spec.get("source")
    folder = spec.get("folder")
    if source == "gdrive" and not (isinstance(folder, str) and re.fullmatch(r"[-\w]{10,}", folder)):
        raise ConfigError(f"{where}.folder: expected the Google Drive folder id of a gdrive source, got {folder!r}")
    drive_folder = folder if source == "gdrive" else None
    expect = _expected_sizes(spec.get("expect"), f"{where}.expect")
    for key in ("path", "url"):
        value = spec.get(key)
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise ConfigError(f"{where}.{key}: expected a string or null, got {value!r}")
    if spec.get("path"):
        path = str(Path(spec["path"]).expanduser())
        return DatasetSource(name, "path", path, drive_folder, expect)
    if spec.get("url"):
        url = spec["url"].strip()
        if urlparse(url).scheme not in ("http", "https", "file"):
            raise ConfigError(f"{where}.url: expected an http://, https:// or file:// URL, got {url!r}")
        return DatasetSource(name, "url", url, drive_folder, expect)
    if source != "gdrive":
        raise ConfigError(f"{where}: source is {source!r} but datasets.{name}.{source} is not set")
    return DatasetSource(name, "gdrive", folder, drive_folder, expect)


def _expected_sizes(expect: Any, where: str) -> dict[str, int] | None:
    if expect is None:
        return None
    if not isinstance(expect, Mapping) or set(expect) != set(EXPECT_KEYS):
        raise ConfigError(f"{where}: expected null or a mapping with keys {list(EXPECT_KEYS)}, got {expect!r}")
    for key, value in expect.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}.{key}: expected a positive integer, got {value!r}")
    return dict(expect)


# source kind -> resolver(name, entry, where in params.yaml) returning that kind's typed source
RESOLVERS: dict[str, Callable[[str, Mapping[str, Any], str], Any]] = {
    "synthetic": resolve_synthetic,
    "gdrive": resolve_download,
    "url": resolve_download,
    "path": resolve_download,
    "amazon": resolve_amazon,
}


def resolve_source(name: str, spec: Any):
    """Check the registry entry `datasets.<name>` and return its typed source description."""
    where = f"params.yaml: datasets.{name}"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping with a `source` key, got {spec!r}")
    kind = spec.get("source")
    if kind not in RESOLVERS:
        raise ConfigError(f"{where}.source: expected one of {', '.join(RESOLVERS)}, got {kind!r}")
    return RESOLVERS[kind](name, spec, where)
