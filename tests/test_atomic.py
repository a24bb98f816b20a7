"""Atomic writes: an error mid-write keeps the previous file or folder, and leaves no temporary."""
from __future__ import annotations

import json

import pytest

from pipeline.atomic import staged_directory, write_atomic, write_json


def test_write_json_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out" / "m.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]


def test_a_failing_writer_keeps_the_previous_file(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"good": True})

    def half_then_fail(fh):
        fh.write(b'{"good": fa')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, half_then_fail)
    assert json.loads(target.read_text()) == {"good": True}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_concurrent_writers_use_distinct_temporaries(tmp_path):
    target = tmp_path / "m.bin"
    seen = []

    def outer(fh):
        seen.append(fh.name)
        write_atomic(target, lambda inner: seen.append(inner.name) or inner.write(b"inner"))
        fh.write(b"outer")

    write_atomic(target, outer)
    assert len(set(seen)) == 2 and target.read_bytes() == b"outer"


def test_staged_directory_keeps_the_old_folder_when_the_body_fails(tmp_path):
    target = tmp_path / "data" / "set"
    with staged_directory(target) as staged:
        (staged / "f.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with staged_directory(target) as staged:
            (staged / "f.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert (target / "f.txt").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
