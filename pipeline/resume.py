"""Resumable training state: the key that identifies a run, every RNG in play, and a state file
that survives a kill (written atomically, checked on load, discarded when it belongs to another run)."""
from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from pipeline.atomic import write_atomic
from pipeline.config import ExperimentConfig
from pipeline.errors import UserError

log = logging.getLogger(__name__)

STATE_FORMAT = 1
PACKAGE_DIR = Path(__file__).resolve().parent
_CHUNK = 1 << 20


class ResumeStateError(UserError, OSError):
    """The resume state could not be written (e.g. a full disk); the previous state is still in place."""


def _hash_files(digest, root: Path, files: Iterable[Path]) -> None:
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")


def code_version(package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 of the pipeline package's .py files (their paths and contents)."""
    digest = hashlib.sha256()
    _hash_files(digest, package_dir, package_dir.rglob("*.py"))
    return digest.hexdigest()


def folder_fingerprint(folder: Path) -> str:
    """sha256 of every file under `folder` (relative paths and contents)."""
    digest = hashlib.sha256()
    _hash_files(digest, folder, (p for p in folder.rglob("*") if p.is_file()))
    return digest.hexdigest()


def run_key(cfg: ExperimentConfig, device: torch.device, data_folders: Iterable[Path]) -> str:
    """Identity of a training run: its configuration, device type, input files and code version."""
    parts = {
        "config": cfg.to_dict(),
        "device": torch.device(device).type,
        "data": {str(folder): folder_fingerprint(Path(folder)) for folder in data_folders},
        "code": code_version(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """The state of every RNG training draws from: the trainer's generator (negatives, graph
    resampling, shuffling), torch's global CPU and CUDA generators (dropout, DVIB noise), numpy, random."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "random": random.getstate(),
    }


def restore_rng(states: Mapping[str, Any], generator: torch.Generator) -> None:
    """Put every RNG back into the state `capture_rng` recorded."""
    generator.set_state(states["generator"])
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = states["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    random.setstate(states["random"])


class ResumeStore:
    """One run's state file: `load` returns the saved state of this run (or None), `save` replaces it
    atomically, `clear` removes it. A state saved under another key is stale and removed on load."""

    def __init__(self, path: str | Path, key: str):
        self.path = Path(path)
        self.key = key

    def _temporaries(self) -> list[Path]:
        return list(self.path.parent.glob(f".{self.path.name}.*.tmp"))

    def load(self) -> dict[str, Any] | None:
        """This run's saved state; None when there is none, it is unreadable (one warning) or stale."""
        for leftover in self._temporaries():  # from a write that was killed
            leftover.unlink(missing_ok=True)
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or "key" not in state:
                raise ValueError(f"expected a resume state of format {STATE_FORMAT}")
        except Exception as exc:  # any unreadable file means a fresh start, never a crashed stage
            log.warning("%s: unreadable resume state (%s: %s); ignoring it and starting afresh",
                        self.path, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            self.path.unlink(missing_ok=True)
            return None
        if state["key"] != self.key:
            log.info("%s: saved for another configuration, data or code; starting afresh", self.path)
            self.path.unlink(missing_ok=True)
            return None
        return state

    def save(self, state: Mapping[str, Any]) -> None:
        """Replace the state file atomically; a failed write raises ResumeStateError and keeps the old one."""
        payload = {"format": STATE_FORMAT, "key": self.key, **state}
        try:
            write_atomic(self.path, lambda fh: torch.save(payload, fh))
        except OSError as exc:
            raise ResumeStateError(
                f"{self.path}: could not save the resume state ({exc.strerror or exc}); "
                "the previous state is kept, so a re-run resumes from it"
            ) from exc

    def clear(self) -> None:
        """Remove the state file and any temporary left by an interrupted write."""
        for path in [self.path, *self._temporaries()]:
            path.unlink(missing_ok=True)
