"""Fetching one real dataset: MMRec's Google Drive folder, a mirror URL or a local folder.

A fetch lands in a scratch folder, is checked against `data/checksums.json`, validated with
`load_mmrec` (plus the published sizes, when the registry states them) and only then moved into
`data/datasets/<name>`; a failed or interrupted fetch leaves any earlier copy as it was. Network
failures become a `FetchError` whose message says how to get the files by hand.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from pipeline.atomic import staged_directory
from pipeline.config import ConfigError
from pipeline.dataset import DatasetError, load_mmrec
from pipeline.sources import transfer
from pipeline.sources.checksums import (
    CHECKSUMS_NAME,
    ChecksumError,
    folder_digests,
    read_checksums,
    record_new,
    sha256_of,
    verify_checksums,
)
from pipeline.sources.messages import failure_message
from pipeline.sources.registry import EXPECT_KEYS, DatasetSource, resolve_source

log = logging.getLogger(__name__)


class FetchError(DatasetError):
    """A dataset could not be fetched from its source; the message says how to continue by hand."""


def fetch_dataset(name: str, spec: Mapping[str, Any], root: str | Path) -> Path:
    """Make `root/<name>` a verified, validated copy of the dataset from its registry entry; returns it."""
    source = resolve_source(name, spec)
    if not isinstance(source, DatasetSource):
        raise ConfigError(f"params.yaml: datasets.{name}: source {source.kind!r} is built locally, not fetched")
    root = Path(root)
    target = root / name
    checksums_file = root.parent / CHECKSUMS_NAME
    known = read_checksums(checksums_file).get(name, {})
    if _reuse_existing(target, source, known, checksums_file):
        return target
    from gdown.exceptions import DownloadError

    log.info("%s: fetching from %s", name, source.describe())
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".staging-fetch-{name}-", dir=target.parent.parent))
    try:
        try:
            located = transfer.fetch_raw(source, scratch)
        except FetchError:
            raise
        except DatasetError as exc:
            raise type(exc)(f"{exc}\nNothing was written to {target}.") from None
        except (OSError, DownloadError) as exc:  # requests' errors are OSErrors; gdown's are DownloadErrors
            raise FetchError(failure_message(source, exc, target)) from None
        with staged_directory(target) as staged:
            move = shutil.copyfile if source.kind == "path" else os.replace
            for file, path in located.items():
                move(path, staged / file)
            digests = folder_digests(staged, name)
            discarded = f"The copy was discarded; {target} is unchanged."
            try:
                verify_checksums(digests, known, name, f"the copy from {source.describe()}")
            except ChecksumError as exc:
                raise ChecksumError(f"{exc}\n{discarded}") from None
            try:
                _check_sizes(staged, source, shown_as=source.location if source.kind == "path" else None)
            except DatasetError as exc:
                raise DatasetError(f"{name} from {source.describe()} failed validation: {exc}\n{discarded}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("%s: verified and validated, now in %s", name, target)
    record_new(checksums_file, name, known, digests, source.describe())
    return target


def _check_sizes(folder: Path, source: DatasetSource, shown_as: str | None = None) -> None:
    data = load_mmrec(folder, shown_as=shown_as)
    if source.expect is None:
        return
    actual = {
        "users": data.n_users,
        "items": data.n_items,
        "interactions": len(data.train) + len(data.valid) + len(data.test),
    }
    if actual != dict(source.expect):
        raise DatasetError(
            f"{folder}: has {_sizes(actual)}, but the published {source.name} dataset has {_sizes(source.expect)} "
            f"(datasets.{source.name}.expect in params.yaml). If your copy differs on purpose, set "
            f"datasets.{source.name}.expect to null or register it under another name."
        )


def _sizes(sizes: Mapping[str, int]) -> str:
    return " / ".join(f"{sizes[k]:,} {k}" for k in EXPECT_KEYS)


def _reuse_existing(target: Path, source: DatasetSource, known: Mapping, checksums_file: Path) -> bool:
    """True if `target` already holds the dataset (checksums match; unknown ones validated and recorded)."""
    if not target.is_dir():
        return False
    digests = folder_digests(target, source.name)
    missing = [f for f, d in digests.items() if d is None]
    if missing:
        log.info("%s: %s lacks %s", source.name, target, missing)
        return False
    if source.kind == "path":
        try:
            located = transfer.locate_files(Path(source.location), source.name, source.describe())
        except DatasetError:
            return False  # fetch_raw reports the problem with the local folder
        if {f: sha256_of(p) for f, p in located.items()} != digests:
            log.info("%s: the files in %s differ from %s: copying them", source.name, source.location, target)
            return False
    try:
        verify_checksums(digests, known, source.name, str(target))
    except ChecksumError as exc:
        log.warning("%s; fetching it again", exc)
        return False
    if all(known.get(f) for f in digests):
        log.info("%s: %s is present and matches data/checksums.json", source.name, target)
        return True
    try:
        _check_sizes(target, source)  # e.g. files placed there by hand
    except DatasetError as exc:
        log.warning("%s: the copy in %s is not valid (%s); fetching it again", source.name, target, exc)
        return False
    record_new(checksums_file, source.name, known, digests, str(target))
    return True
