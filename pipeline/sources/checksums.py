"""The checksum store `data/checksums.json`: the sha256 of every file of every fetched dataset.

A null entry is not known yet: the first verified copy records it, and from then on a different
file is an error.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Mapping

from pipeline.atomic import write_json
from pipeline.dataset import DatasetError
from pipeline.sources.registry import dataset_files

log = logging.getLogger(__name__)

CHECKSUMS_NAME = "checksums.json"  # beside the datasets folder: data/checksums.json
CHECKSUMS_ABOUT = (
    "sha256 of every file of every downloaded dataset; null = not known yet: the first verified "
    "copy records it. Commit this file; a later mismatch is an error."
)


class ChecksumError(DatasetError):
    """A dataset file differs from the sha256 recorded in data/checksums.json."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checksums(path: Path) -> dict[str, dict[str, str | None]]:
    """The `datasets` mapping of a checksums file (name -> file -> sha256 or null); {} if there is none."""
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    datasets = doc.get("datasets") if isinstance(doc, dict) else None
    if not isinstance(datasets, dict):
        raise DatasetError(f'{path}: expected {{"datasets": {{name: {{file: sha256 or null}}}}}}')
    for name, files in datasets.items():
        if not isinstance(files, dict):
            raise DatasetError(f"{path}: datasets.{name}: expected a mapping file -> sha256, got {files!r}")
        for file, digest in files.items():
            if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
                raise DatasetError(
                    f"{path}: datasets.{name}.{file}: expected null or a 64-digit lowercase hex sha256, got {digest!r}"
                )
    return datasets


def record_checksums(path: Path, name: str, digests: Mapping[str, str]) -> None:
    """Add or update dataset `name`'s sha256 entries in the checksums file (atomically)."""
    doc = json.loads(path.read_text()) if path.exists() else {"about": CHECKSUMS_ABOUT, "datasets": {}}
    doc["datasets"].setdefault(name, {}).update(digests)
    write_json(path, doc)


def folder_digests(folder: Path, name: str) -> dict[str, str | None]:
    """sha256 of each dataset file in `folder` (None for a missing file)."""
    return {f: sha256_of(folder / f) if (folder / f).is_file() else None for f in dataset_files(name)}


def verify_checksums(digests: Mapping[str, str | None], known: Mapping[str, str | None], name: str, where: str) -> None:
    """Raise ChecksumError if any file's sha256 differs from a recorded one."""
    for file, digest in digests.items():
        expected = known.get(file)
        if expected and digest != expected:
            raise ChecksumError(
                f"{file} of {where}: sha256 {digest} differs from {expected}, recorded for {name} in "
                f"data/checksums.json. "
                f"If the data changed on purpose, delete the {name!r} entry from data/checksums.json to record the "
                f"new checksums; for different data, register it under another dataset name."
            )


def record_new(checksums_file: Path, name: str, known: Mapping, digests: Mapping[str, str], origin: str) -> None:
    """Record the digests not known yet (a first verified copy) and tell the user to commit them."""
    new = {f: d for f, d in digests.items() if not known.get(f)}
    if not new:
        return
    record_checksums(checksums_file, name, new)
    log.warning(
        "%s: recorded the sha256 of %s (first verified copy, from %s) in %s: commit it "
        "(git add %s && git commit) so that every later download is checked against it",
        name, sorted(new), origin, checksums_file, checksums_file,
    )
