"""What the user reads when a fetch fails: the reason in one line and how to continue by hand."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from pipeline.sources.registry import DRIVE_FOLDER_URL, DatasetSource, dataset_files
from pipeline.sources.transfer import TIMEOUT_S


def transfer_reason(exc: BaseException) -> str:
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
            f"({transfer_reason(exc)}). The link may have moved or hit a quota; download by hand instead."
        )
    else:
        head = f"dataset {name!r}: could not fetch it from {source.describe()}: {transfer_reason(exc)}."
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
