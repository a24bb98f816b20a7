"""A stage stopped by SIGTERM (DVC, a scheduler, a preemption) exits 130 and leaves every output
as it was or complete, never half-written."""
from __future__ import annotations

import logging
import os
import signal

from pipeline.atomic import write_atomic, write_text
from pipeline.stages.common import run_stage, signals_deferred

log = logging.getLogger("test_stage_signals")


def _sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_a_write_keeps_the_earlier_output_and_no_temporary(tmp_path, caplog):
    target = tmp_path / "metrics.json"
    target.write_text("earlier result\n")

    def half_write(fh) -> None:
        fh.write(b"new, half")
        _sigterm_self()
        fh.write(b"never reached")

    handler_before = signal.getsignal(signal.SIGTERM)
    with caplog.at_level(logging.ERROR):
        assert run_stage(lambda: write_atomic(target, half_write), log) == 130
    assert target.read_text() == "earlier result\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert "interrupted (received signal 15)" in caplog.text
    assert signal.getsignal(signal.SIGTERM) is handler_before


def test_outputs_written_together_are_both_complete_when_sigterm_comes_between_them(tmp_path):
    def write_pair() -> None:
        with signals_deferred():
            write_text(tmp_path / "trials.json", "all trials\n")
            _sigterm_self()
            write_text(tmp_path / "best.yaml", "winner\n")
        raise AssertionError("the held signal must be delivered when the block ends")

    assert run_stage(write_pair, log) == 130
    assert (tmp_path / "trials.json").read_text() == "all trials\n"
    assert (tmp_path / "best.yaml").read_text() == "winner\n"


def test_a_stage_that_finishes_exits_0_and_restores_the_handler():
    handler_before = signal.getsignal(signal.SIGTERM)
    assert run_stage(lambda: None, log) == 0
    assert signal.getsignal(signal.SIGTERM) is handler_before
