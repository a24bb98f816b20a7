"""Reading the public Amazon files line by line: JSON lines or Python-literal lines, gzipped or not."""
from __future__ import annotations

import ast
import gzip
import json
import zlib
from pathlib import Path
from typing import Any, Iterator

from pipeline.dataset import DatasetError


def open_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number from 1, text) of a text file, gunzipping it when it starts with the gzip magic."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    number = 0
    try:
        with opener(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                try:
                    yield number, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DatasetError(f"{path}: line {number}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, EOFError, zlib.error) as exc:  # a damaged or cut-off gzip stream
        raise DatasetError(f"{path}: unreadable after line {number} ({type(exc).__name__}: {exc})") from None


def parse_record(path: Path, number: int, text: str) -> dict[str, Any]:
    """One record from a JSON line (2018 files, 2014 reviews) or a Python-literal line (2014 metadata)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        try:
            record = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise DatasetError(
                f"{path}: line {number}: unreadable record: neither JSON nor a Python literal: {text.strip()[:120]!r}"
            ) from None
    if not isinstance(record, dict):
        raise DatasetError(f"{path}: line {number}: expected one record {{...}} per line, got {type(record).__name__}")
    return record
