"""Bringing a dataset's files within reach: a Google Drive folder, a mirror URL, an archive or a local folder.

Selecting files from a Drive listing and locating them in what was fetched are pure functions;
the gdown calls around them are thin, so tests can replace them.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from pipeline.dataset import FEATURE_FILES, DatasetError
from pipeline.sources.registry import DRIVE_FOLDER_URL, DatasetSource, dataset_files

log = logging.getLogger(__name__)

# (connect, between bytes) in seconds: offline fails at once, a dead server within 10 s.
TIMEOUT_S = (10.0, 60.0)
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar")
SEARCH_DEPTH = 3  # folder levels searched for the .inter file inside an archive or a local folder


@dataclass(frozen=True)
class DriveFile:
    """One file of a Drive folder listing: its Drive id and its path below the listed folder."""

    id: str
    path: str


def is_archive(name: str) -> bool:
    """True if `name` ends like an archive gdown can unpack."""
    return name.lower().endswith(ARCHIVE_SUFFIXES)


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
        if is_archive(f.path) and (f in own or PurePosixPath(f.path).name.lower().split(".")[0] == key)
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


def fetch_raw(source: DatasetSource, scratch: Path) -> dict[str, Path]:
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
        if is_archive(urlparse(url).path):
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
    if len(selected) == 1 and is_archive(selected[0].path):
        return locate_files(_unpack(scratch / "drive" / selected[0].path, scratch / "unpacked", origin), name, origin)
    return locate_files(scratch / "drive", name, origin)
