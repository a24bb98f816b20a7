"""The results committed to git are the ones dvc.lock records: no metrics file edited, re-run or
copied by hand after the run that locked it (a stale or foreign result passed off as the locked one).
"""
from __future__ import annotations

import functools
import hashlib
import shutil
from pathlib import Path

import pytest
import yaml
from dvc_data.hashfile.tree import Tree

ROOT = Path(__file__).resolve().parents[1]
TRACKED = "metrics/"  # outputs under it are committed to git; the rest live in DVC's cache


def file_md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def dir_md5(folder: Path) -> str:
    """DVC's hash of a folder (`hash: md5`), computed by DVC's own tree object from its files' md5."""
    tree = Tree.from_list([{"md5": file_md5(p), "relpath": p.relative_to(folder).as_posix()}
                           for p in folder.rglob("*") if p.is_file()])
    tree.digest()
    return tree.hash_info.value


@functools.cache
def locked_outputs() -> list[tuple[str, str, dict]]:
    """(stage, path, lock entry) of every output dvc.lock records under metrics/."""
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    return [(stage, out["path"], out) for stage, entry in lock["stages"].items()
            for out in entry.get("outs", []) if out["path"].startswith(TRACKED)]


def test_the_lock_records_the_committed_metrics():
    assert len(locked_outputs()) >= 50  # train, tune, table, robustness and report outputs


@pytest.mark.parametrize("stage,path,entry", locked_outputs(), ids=lambda v: v if isinstance(v, str) else "")
def test_committed_output_is_the_locked_one(stage, path, entry):
    target = ROOT / path
    assert target.exists(), f"dvc.lock stage {stage!r} records {path}, which is not committed"
    actual = dir_md5(target) if target.is_dir() else file_md5(target)
    assert actual == entry["md5"], (
        f"{path} is not what stage {stage!r} wrote when dvc.lock was last updated "
        f"(md5 {actual}, locked {entry['md5']}): re-run `dvc repro` and commit its outputs with dvc.lock"
    )


def test_a_changed_byte_in_a_locked_folder_is_caught(tmp_path):
    stage, path, entry = next(o for o in locked_outputs() if (ROOT / o[1]).is_dir())
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / path, copy)
    assert dir_md5(copy) == entry["md5"]  # DVC's folder hash reproduces the locked value
    victim = sorted(p for p in copy.rglob("*") if p.is_file())[0]
    victim.write_bytes(victim.read_bytes().replace(b"0", b"1", 1))
    assert dir_md5(copy) != entry["md5"]
