"""Atomic writes: a failed stage never leaves a half-written output nor destroys an earlier one."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import torch


def replace_atomically(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through `write(file)` into a uniquely named temporary sibling, fsync it, then
    rename it over `path`; on any failure the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    replace_atomically(path, lambda fh: fh.write(text.encode()))


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save atomically."""
    replace_atomically(path, lambda fh: torch.save(obj, fh))


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
