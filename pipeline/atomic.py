"""Atomic writes: a failed stage never leaves a half-written output nor destroys an earlier one."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
