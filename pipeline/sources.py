"""Fetching real datasets (SPEC §1): MMRec's Google Drive folder, a mirror URL or a local folder.

A fetch lands in a scratch folder, is checked against `data/checksums.json`, validated with
`load_mmrec` (plus the published sizes, when the registry states them) and only then moved into
`data/datasets/<name>`; a failed or interrupted fetch leaves any earlier copy as it was. Network
failures become a `FetchError` whose message says how to get the files by hand.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from pipeline.atomic import staged_directory, write_json
from pipeline.config import ConfigError
from pipeline.dataset import FEATURE_FILES, DatasetError, load_mmrec

log = logging.getLogger(__name__)

DRIVE_FOLDER_URL = "https://drive.google.com/drive/folders/"
CHECKSUMS_NAME = "checksums.json"  # beside the datasets folder: data/checksums.json
CHECKSUMS_ABOUT = (
    "sha256 of every file of every downloaded dataset; null = not known yet: the first verified "
    "copy records it. Commit this file; a later mismatch is an error."
)
# (connect, between bytes) in seconds: offline fails at once, a dead server within 10 s.
TIMEOUT_S = (10.0, 60.0)
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar")
SPEC_KEYS = ("source", "folder", "url", "path", "expect")
EXPECT_KEYS = ("users", "items", "interactions")
SEARCH_DEPTH = 3  # folder levels searched for the .inter file inside an archive or a local folder


class FetchError(DatasetError):
    """A dataset could not be fetched from its source; the message says how to continue by hand."""


class ChecksumError(DatasetError):
    """A dataset file differs from the sha256 recorded in data/checksums.json."""


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
class DriveFile:
    """One file of a Drive folder listing: its Drive id and its path below the listed folder."""

    id: str
    path: str


def dataset_files(name: str) -> tuple[str, ...]:
    """The files of an MMRec dataset folder, in a fixed order."""
    return (f"{name}.inter", *FEATURE_FILES.values())


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def resolve_source(name: str, spec: Any) -> DatasetSource:
    """Turn a `datasets.<name>` registry entry into a source: `path` wins over `url`, which wins over `source`."""
    where = f"params.yaml: datasets.{name}"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys {list(SPEC_KEYS)}, got {spec!r}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {list(SPEC_KEYS)}")
    source = spec.get("source")
    if source not in ("gdrive", "url", "path"):
        raise ConfigError(f"{where}.source: expected synthetic, gdrive, url or path, got {source!r}")
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


# --- Drive: listing -> selection is pure; the gdown calls are thin -----------------------------


def select_drive_files(listing: Iterable[DriveFile], name: str, folder_id: str = "") -> list[DriveFile]:
    """Pick dataset `name`'s files from a Drive folder listing: the MMRec files of its subfolder, or one archive."""
    listing = list(listing)
    where = f"Google Drive folder {DRIVE_FOLDER_URL}{folder_id}"
    key = name.lower()
    # The dataset's own files: those below a folder named after it (at any depth, any case).
    own = [f for f in listing if key in (part.lower() for part in PurePosixPath(f.path).parts[:-1])]
    wanted = {n.lower(): n for n in dataset_files(name)}
    chosen: dict[str, DriveFile] = {}
    for file in own:
        base = PurePosixPath(file.path).name.lower()
        if base in wanted:
            if wanted[base] in chosen:
                first = chosen[wanted[base]].path
                raise DatasetError(f"{where}: subfolder {name}/ holds {wanted[base]} twice ({first}, {file.path})")
            chosen[wanted[base]] = file
    if len(chosen) == len(wanted):
        return [chosen[n] for n in dataset_files(name)]
    archives = [
        f for f in listing
        if _is_archive(f.path) and (f in own or PurePosixPath(f.path).name.lower().split(".")[0] == key)
    ]
    if len(archives) == 1 and not chosen:
        return archives
    if not own and not archives:
        tops = sorted({PurePosixPath(f.path).parts[0] for f in listing})
        raise DatasetError(f"{where}: no subfolder or archive named {name!r}; it holds {tops}")
    missing = [n for n in dataset_files(name) if n not in chosen]
    found = sorted(PurePosixPath(f.path).name for f in own)
    raise DatasetError(f"{where}: subfolder {name}/ lacks {missing}; it holds {found}")


def list_drive_folder(folder_id: str) -> list[DriveFile]:
    """List every file below a public Drive folder (names and ids only, nothing is downloaded)."""
    import gdown  # the network libraries are needed only for downloads

    log.info("listing Google Drive folder %s%s", DRIVE_FOLDER_URL, folder_id)
    entries = gdown.download_folder(id=folder_id, skip_download=True, quiet=True, timeout=TIMEOUT_S, retries=0)
    return [DriveFile(id=e.id, path=PurePosixPath(*Path(e.path).parts).as_posix()) for e in entries]


def download_drive_file(file: DriveFile, dest: Path) -> None:
    """Download one Drive file to `dest`, showing a progress bar; no file is left on failure."""
    import gdown

    dest.parent.mkdir(parents=True, exist_ok=True)
    gdown.download(id=file.id, output=str(dest), quiet=False, timeout=TIMEOUT_S, retries=0)


def download_url(url: str, dest: Path) -> None:
    """Fetch one http(s):// URL (progress bar) or file:// URL to `dest`; no file is left on failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        src = Path(url2pathname(unquote(parsed.path)))
        log.info("copying %s", src)
        shutil.copyfile(src, dest)
        return
    import gdown

    gdown.download(url=url, output=str(dest), quiet=False, use_cookies=False, timeout=TIMEOUT_S, retries=0)


# --- locating a dataset's files in what was fetched ---------------------------------------------


def _visible_files(folder: Path) -> list[Path]:
    # Skips hidden files and macOS archive litter (__MACOSX/, ._name).
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith((".", "__MACOSX")) for part in p.relative_to(folder).parts)
    )


def locate_files(folder: Path, name: str, origin: str) -> dict[str, Path]:
    """Find `<name>.inter` and the feature files beside it, up to SEARCH_DEPTH folders below `folder`."""
    files = _visible_files(folder)
    inters = [p for p in files if p.suffix == ".inter" and len(p.relative_to(folder).parts) <= SEARCH_DEPTH]
    exact = [p for p in inters if p.name.lower() == f"{name}.inter".lower()]
    listing = [p.relative_to(folder).as_posix() for p in files][:12]
    if len(exact) == 1 or (not exact and len(inters) == 1):
        inter = (exact or inters)[0]
    elif not inters:
        raise DatasetError(
            f"{origin}: unexpected layout: no {name}.inter file (searched {SEARCH_DEPTH} folder levels); "
            f"it contains {listing}"
        )
    else:
        found = [p.relative_to(folder).as_posix() for p in (exact or inters)]
        raise DatasetError(f"{origin}: unexpected layout: several interaction files {found}; expected one {name}.inter")
    if inter.name != f"{name}.inter":
        log.info("%s: using %s as %s.inter", origin, inter.relative_to(folder), name)
    located = {f"{name}.inter": inter}
    for feature in FEATURE_FILES.values():
        path = inter.parent / feature
        if not path.is_file():
            raise DatasetError(
                f"{origin}: unexpected layout: {inter.relative_to(folder).as_posix()} has no {feature} beside it; "
                f"it contains {listing}"
            )
        located[feature] = path
    return located


def _unpack(archive: Path, into: Path, origin: str) -> Path:
    import gdown

    log.info("unpacking %s", archive.name)
    try:
        gdown.extractall(str(archive), to=str(into))
    except Exception as exc:  # zipfile.BadZipFile, tarfile.ReadError, EOFError, ValueError (unsafe member)
        reason = f"{type(exc).__name__}: {exc}"
        raise DatasetError(f"{origin}: {archive.name} is not a readable archive ({reason})") from None
    return into


def _fetch_raw(source: DatasetSource, scratch: Path) -> dict[str, Path]:
    """Bring the dataset's files from its source into reach (in `scratch`, or in place for a local folder)."""
    name, origin = source.name, source.describe()
    if source.kind == "path":
        folder = Path(source.location)
        if folder.is_file():
            raise DatasetError(
                f"datasets.{name}.path: {folder} is a file; expected a folder (for an archive set "
                f"datasets.{name}.url: file://{folder.resolve()})"
            )
        if not folder.is_dir():
            raise DatasetError(f"datasets.{name}.path: folder {folder} not found")
        return locate_files(folder, name, origin)
    if source.kind == "url":
        url = source.location
        if _is_archive(urlparse(url).path):
            archive = scratch / PurePosixPath(urlparse(url).path).name
            download_url(url, archive)
            return locate_files(_unpack(archive, scratch / "unpacked", origin), name, origin)
        for file in dataset_files(name):
            download_url(f"{url.rstrip('/')}/{file}", scratch / "files" / file)
        return locate_files(scratch / "files", name, origin)
    selected = select_drive_files(list_drive_folder(source.location), name, source.location)
    for file in selected:
        log.info("downloading %s from Google Drive", file.path)
        download_drive_file(file, scratch / "drive" / file.path)
    if len(selected) == 1 and _is_archive(selected[0].path):
        return locate_files(_unpack(scratch / "drive" / selected[0].path, scratch / "unpacked", origin), name, origin)
    return locate_files(scratch / "drive", name, origin)


# --- checksums -----------------------------------------------------------------------------------


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


def _check_sizes(folder: Path, source: DatasetSource) -> None:
    data = load_mmrec(folder)
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


# --- fetch -----------------------------------------------------------------------------------------


def fetch_dataset(name: str, spec: Mapping[str, Any], root: str | Path) -> Path:
    """Make `root/<name>` a verified, validated copy of the dataset from its registry entry; returns it."""
    source = resolve_source(name, spec)
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
            located = _fetch_raw(source, scratch)
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
                _check_sizes(staged, source)
            except DatasetError as exc:
                raise DatasetError(f"{name} from {source.describe()} failed validation: {exc}\n{discarded}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("%s: verified and validated, now in %s", name, target)
    _record_new(checksums_file, name, known, digests, source.describe())
    return target


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
            located = locate_files(Path(source.location), source.name, source.describe())
        except DatasetError:
            return False  # _fetch_raw reports the problem with the local folder
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
    _record_new(checksums_file, source.name, known, digests, str(target))
    return True


def _record_new(checksums_file: Path, name: str, known: Mapping, digests: Mapping[str, str], origin: str) -> None:
    new = {f: d for f, d in digests.items() if not known.get(f)}
    if not new:
        return
    record_checksums(checksums_file, name, new)
    log.warning(
        "%s: recorded the sha256 of %s (first verified copy, from %s) in %s: commit it "
        "(git add %s && git commit) so that every later download is checked against it",
        name, sorted(new), origin, checksums_file, checksums_file,
    )


# --- failure messages --------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """One line saying why a transfer failed, without a traceback."""
    import requests

    text = str(exc)
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason} for {exc.response.url}"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"no answer within {TIMEOUT_S[0]:.0f} s (connect) / {TIMEOUT_S[1]:.0f} s (read): {type(exc).__name__}"
    if isinstance(exc, requests.exceptions.ConnectionError):
        host = urlparse(exc.request.url).hostname if exc.request is not None else "the server"
        if "Failed to resolve" in text or "NameResolutionError" in text or "Name or service not known" in text:
            return f"cannot resolve host name {host} (no network?)"
        if "Connection refused" in text:
            return f"connection to {host} refused"
        return f"cannot connect to {host}: {text[:300]}"
    first = text.strip().splitlines()[0].rstrip(".") if text.strip() else ""
    return f"{type(exc).__name__}: {first}"[:400]


def failure_message(source: DatasetSource, exc: BaseException, target: Path) -> str:
    """The full message for a failed fetch: dataset, source, reason, and how to continue by hand."""
    from gdown.exceptions import FileURLRetrievalError

    name = source.name
    if "too many users have viewed or downloaded" in str(exc).lower():
        head = (
            f"dataset {name!r}: Google Drive refuses the download for now: too many users have viewed or "
            f"downloaded the file recently (Drive's download quota; it usually lifts within 24 hours). "
            f"Try again later, or download the files in a browser (signed in to a Google account) and continue by hand."
        )
    elif isinstance(exc, FileURLRetrievalError):
        head = (
            f"dataset {name!r}: Google Drive would not serve a file of {source.describe()} "
            f"({_reason(exc)}). The link may have moved or hit a quota; download by hand instead."
        )
    else:
        head = f"dataset {name!r}: could not fetch it from {source.describe()}: {_reason(exc)}."
    return f"{head}\nNothing was written to {target}.\n{manual_instructions(source, target)}"


def manual_instructions(source: DatasetSource, target: Path) -> str:
    """Step-by-step instructions to provide a dataset by hand."""
    name = source.name
    files = ", ".join(dataset_files(name))
    placed = ", ".join(f"{target}/{f}" for f in dataset_files(name))
    lines = ["How to continue by hand:"]
    if source.drive_folder:
        lines += [
            f"  1. In a browser, open {DRIVE_FOLDER_URL}{source.drive_folder}",
            f"     and download the files of its subfolder '{name}': {files}.",
        ]
    else:
        lines += [f"  1. Get the files of dataset '{name}': {files}."]
    lines += [
        "  2. Either keep them in any folder and point the pipeline at it (recommended):",
        f"       dvc exp run -S dataset={name} -S datasets.{name}.path=/absolute/path/to/that/folder",
        f"     (or set datasets.{name}.path in params.yaml), or put them exactly here:",
        f"       {placed}",
        f"     and run: dvc exp run -S dataset={name}",
        f"  3. Or use your own copy on a server or disk: set datasets.{name}.url to an http(s):// or file:// URL",
        "     of an archive (.zip, .tar.gz) holding the three files, or of a folder holding them, e.g.",
        f"       dvc exp run -S dataset={name} -S datasets.{name}.url=https://example.org/mmrec/{name}.zip",
        "Every copy is checked against data/checksums.json and validated before use.",
    ]
    return "\n".join(lines)
