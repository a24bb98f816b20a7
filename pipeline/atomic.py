"""Atomic writes: a failed stage never leaves a half-written output nor destroys an earlier one."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import torch


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(fh)` on a uniquely named temporary file beside `path`, fsync it, then rename it
    over `path`: readers see the old file or the new one, never a partial one, and concurrent
    writers never share a temporary file. On any error the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save `obj` atomically."""
    write_atomic(path, lambda fh: torch.save(obj, fh))


@contextmanager
def staged_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder named like `target`; on success it replaces `target`.

    The staging folder lives beside `target`'s parent (same file system, so the swap is a rename)
    and is removed if the body raises, leaving any earlier `target` untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging_root = Path(tempfile.mkdtemp(prefix=f".staging-{target.name}-", dir=target.parent.parent))
    staged = staging_root / target.name
    staged.mkdir()
    try:
        yield staged
        if target.exists():
            old = staging_root / f"{target.name}.old"
            os.replace(target, old)
        os.replace(staged, target)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
