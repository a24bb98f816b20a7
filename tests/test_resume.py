"""Resuming killed runs: a real SIGKILL of the train/table stage, a re-run, and the uninterrupted run's
exact metrics and curves; damaged, stale and unwritable resume states; `dvc repro` killed and re-run;
the trainer's progress output."""
from __future__ import annotations

import csv
import dataclasses
import errno
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import pipeline.atomic
from pipeline.graphs import write_graphs
from pipeline.models import build_model
from pipeline.resume import ResumeStateError, ResumeStore, run_key
from pipeline.runtime import cpu_model_name
from pipeline.stages import train as train_stage
from pipeline.trainer import train

from conftest import copy_project

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4
TRAIN_ARGS = ("--dataset", "synthetic", "--record", "metrics/train_full.json", "--metrics", "metrics/train.json",
              "--checkpoint", "models/train.pt",
              "--curves", "metrics/curves/train")
STATE = Path("models/resume/train/state.pt")

# Runs a stage module after patching the trainer so that the process stops, prints PAUSED and
# waits to be killed: at the start of its n-th training epoch ("epoch n") or half-way through
# writing its n-th resume state ("write n").
_RUNNER = r"""
import io, runpy, sys, time
import pipeline.resume as resume, pipeline.trainer as trainer
mode, n, module, *args = sys.argv[1:]
n = int(n)
calls = []

def pause():
    print("PAUSED", file=sys.stderr, flush=True)
    time.sleep(600)

if mode == "epoch":
    real_epoch = trainer.train_epoch
    def train_epoch(*a, **k):
        calls.append(1)
        if len(calls) == n:
            pause()
        return real_epoch(*a, **k)
    trainer.train_epoch = train_epoch
elif mode == "write":
    real_replace = resume.write_atomic
    def write_atomic(path, write):
        calls.append(1)
        if len(calls) != n:
            return real_replace(path, write)
        def half(fh):
            buf = io.BytesIO()
            write(buf)
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            fh.flush()
            pause()
        return real_replace(path, half)
    resume.write_atomic = write_atomic
sys.argv = [module, *args]
runpy.run_module(module, run_name="__main__")
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def run_module(project: Path, module: str, *args: str) -> str:
    """Run a stage module to completion in `project`; return its log."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=project, env=_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def run_module_killed(project: Path, mode: str, n: int, module: str, *args: str) -> str:
    """Run a stage module until the runner pauses it (see _RUNNER), SIGKILL it there; return its log."""
    log_path = project / "killed.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-c", _RUNNER, mode, str(n), module, *args], cwd=project,
                                env=_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while "PAUSED" not in log_path.read_text():
            assert proc.poll() is None, f"the run ended before pausing:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, "the run never paused"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return log_path.read_text()


def read_curves(folder: Path) -> dict[str, list[tuple[int, str]]]:
    """Each dvclive curve under `folder` as its (step, value) rows (timestamps aside)."""
    curves = {}
    for path in sorted(folder.rglob("*.tsv")):
        with path.open() as fh:
            curves[str(path.relative_to(folder))] = [(int(r["step"]), r[path.stem]) for r in csv.DictReader(fh, delimiter="\t")]
    return curves


def outcome(project: Path, metrics: str = "metrics/train_full.json", curves: str = "metrics/curves/train") -> tuple:
    """A finished run's metrics (timings aside) and curves."""
    result = json.loads((project / metrics).read_text())
    result.pop("train_seconds")
    return result, read_curves(project / curves)


def _tiny_params(params: dict) -> dict:
    params["train"].update(epochs=EPOCHS, stopping_step=10, batch_size=128, threads=1, device="cpu")
    params["graphs"]["knn_k"] = 5
    params["table"]["seeds"] = [999, 1000]
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_dir, tiny_data) -> Path:
    """A project folder with tiny params, the tiny dataset as `synthetic` and its graphs."""
    work = tmp_path_factory.mktemp("resume_project")
    params = _tiny_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    data = work / "data" / "datasets" / "synthetic"
    shutil.copytree(tiny_dir, data)
    (data / "tiny.inter").rename(data / "synthetic.inter")
    write_graphs(work / "data" / "graphs" / "synthetic", tiny_data, knn_k=5)
    tuned = work / "metrics" / "tune" / "synthetic" / "VBPRa.best.yaml"  # the table trains at params.yaml's point
    tuned.parent.mkdir(parents=True)
    tuned.write_text("{}\n")
    return work


def run_in_process(project: Path, model: str, out: str) -> tuple:
    """The outcome of an uninterrupted train stage run in this process (into `out`/ of `project`)."""
    cwd = Path.cwd()
    os.chdir(project)
    try:
        train_stage.run(model, "synthetic", Path(out, "train.json"), Path(out, "train.pt"), Path(out, "curves"),
                        Path(out, "state.pt"))
    finally:
        os.chdir(cwd)
        torch.set_flush_denormal(False)  # configure_runtime's setting: keep the other tests' process as it was
    return outcome(project, f"{out}/train.json", f"{out}/curves")


@pytest.fixture(scope="module")
def uninterrupted(project):
    """uninterrupted(model) -> the outcome of a train stage run that nobody killed (cached)."""
    cache = {}

    def get(model: str):
        if model not in cache:
            cache[model] = run_in_process(project, model, f"uninterrupted/{model}")
        return cache[model]

    return get


def test_the_record_names_what_computed_it(project, uninterrupted):
    uninterrupted("VBPRa")
    record = json.loads((project / "uninterrupted" / "VBPRa" / "train.json").read_text())
    # train.threads is 1 in these params; the CPU's name is what this machine reports
    assert record["hardware"] == {"device_name": cpu_model_name(), "torch": torch.__version__, "threads": 1}
    assert record["device"] == "cpu" and record["hardware"]["device_name"]


# FREEDOM resamples its graph every epoch; VBPRa is a DVIB a-variant. FREEDOM is killed half-way
# through writing its third state (after epoch 2), VBPRa at the start of its third epoch.
@pytest.mark.parametrize("model, kill_in", [("FREEDOM", "write"), ("VBPRa", "epoch")])
def test_killed_run_resumes_to_the_uninterrupted_result(project, uninterrupted, model, kill_in):
    expected = uninterrupted(model)
    run_module_killed(project, kill_in, 3, "pipeline.stages.train", "--model", model, *TRAIN_ARGS)
    if kill_in == "write":
        assert list((project / STATE).parent.glob(".state.pt.*.tmp")), "the killed write left its temporary file"
    assert torch.load(project / STATE, weights_only=True)["loop"]["next_epoch"] == 2

    log = run_module(project, "pipeline.stages.train", "--model", model, *TRAIN_ARGS)
    assert f"resuming {model} on synthetic from epoch 2" in log
    assert "epoch   0" not in log and "epoch   1" not in log  # no epoch is trained twice
    metrics, curves = outcome(project)
    assert metrics == expected[0]
    assert curves == expected[1]
    assert all([step for step, _ in rows] == list(range(EPOCHS)) for rows in curves.values())
    assert list((project / STATE).parent.iterdir()) == []  # the completed run removed its state


def test_table_keeps_finished_seeds_and_resumes_the_interrupted_one(project, uninterrupted):
    cell = ("--model", "VBPRa", "--dataset", "synthetic")
    # seed 999 trains EPOCHS epochs; stop at the start of seed 1000's second epoch
    log = run_module_killed(project, "epoch", EPOCHS + 2, "pipeline.stages.table", *cell)
    assert "[1/2] VBPRa on synthetic, seed 999" in log and "[2/2] VBPRa on synthetic, seed 1000" in log
    shutil.rmtree(project / "metrics" / "table")  # as DVC does before it re-runs the stage
    shutil.rmtree(project / "models" / "table")

    log = run_module(project, "pipeline.stages.table", *cell)
    assert "VBPRa on synthetic, seed 999: already finished, not retraining" in log
    assert "resuming VBPRa on synthetic from epoch 1" in log
    assert log.count("epoch   0") == 0
    seed999 = outcome(project, "metrics/table/synthetic/VBPRa/seed999.json", "metrics/curves/synthetic/VBPRa/seed999")
    assert seed999 == uninterrupted("VBPRa")  # params.yaml's seed is 999
    assert json.loads((project / "metrics/synthetic/VBPRa.json").read_text())["seeds"] == 2
    assert list((project / "models/resume/table/synthetic/VBPRa").iterdir()) == []


# ---------------------------------------------------------------- the state file itself


def _state(tag: int) -> dict:
    return {"phase": "training", "loop": {"next_epoch": tag}, "weights": torch.arange(1000.0) * tag}


def test_truncated_or_corrupt_state_is_reported_once_and_ignored(tmp_path, caplog):
    path = tmp_path / "state.pt"
    store = ResumeStore(path, key="k")
    for damage in (lambda b: b[: len(b) // 2], lambda b: b[:-100], lambda b: b"not a checkpoint", lambda b: b""):
        store.save(_state(3))
        assert store.load()["loop"]["next_epoch"] == 3
        path.write_bytes(damage(path.read_bytes()))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pipeline.resume"):
            assert store.load() is None
        assert len(caplog.records) == 1 and str(path) in caplog.text and "starting afresh" in caplog.text
        assert not path.exists()


def test_state_of_another_configuration_is_discarded(tmp_path):
    path = tmp_path / "state.pt"
    ResumeStore(path, key="old").save(_state(5))
    assert ResumeStore(path, key="new").load() is None
    assert not path.exists()


def test_full_disk_gives_a_clear_error_and_keeps_the_previous_state(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    store = ResumeStore(path, key="k")
    store.save(_state(2))

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pipeline.atomic.os, "fsync", full_disk)
    with pytest.raises(ResumeStateError, match=r"state\.pt: could not save the resume state \(No space left"):
        store.save(_state(3))
    monkeypatch.undo()
    assert store.load()["loop"]["next_epoch"] == 2
    assert list(tmp_path.iterdir()) == [path]


def test_run_key_follows_config_and_data(tmp_path, make_config, tiny_dir):
    data = tmp_path / "data"
    shutil.copytree(tiny_dir, data)
    cfg = make_config("VBPRa")
    key = run_key(cfg, torch.device("cpu"), [data])
    assert run_key(cfg, torch.device("cpu"), [data]) == key
    assert run_key(dataclasses.replace(cfg, seed=cfg.seed + 1), torch.device("cpu"), [data]) != key
    (data / "text_feat.npy").write_bytes((data / "text_feat.npy").read_bytes() + b"\0")
    assert run_key(cfg, torch.device("cpu"), [data]) != key


# ---------------------------------------------------------------- DVC


def test_dvc_repro_killed_mid_run_resumes_and_ends_clean(tmp_path):
    work = tmp_path / "repo"
    copy_project(work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["synthetic"].update(n_users=60, n_items=80, latent_dim=8, image_dim=48, text_dim=24, mean_interactions=10.0)
    params["train"].update(epochs=80, stopping_step=80, batch_size=256, threads=1, device="cpu")
    params["graphs"]["knn_k"] = 5
    params["model"] = "FREEDOM"
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **_env(),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc_site"), "HOME": str(tmp_path),
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=work, env=env, check=True)

    def dvc(*args) -> str:
        proc = subprocess.run(["dvc", *args], cwd=work, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout + proc.stderr

    log_path = tmp_path / "killed.log"
    with log_path.open("w") as log:  # its own session: the kill takes dvc and the stage it runs
        proc = subprocess.Popen(["dvc", "repro", "train"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "epoch   3" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "max_epochs at epoch" not in log_path.read_text(), "the run finished before the kill"

    log = dvc("repro", "train")
    assert "resuming FREEDOM on synthetic from epoch" in log
    assert list((work / "models/resume/train").iterdir()) == []
    assert "up to date" in dvc("status", "train")
    assert outcome(work, curves="metrics/train_curves") == run_in_process(work, "FREEDOM", "uninterrupted")


# ---------------------------------------------------------------- progress


class _Terminal(io.StringIO):
    def __init__(self, is_terminal: bool):
        super().__init__()
        self.is_terminal = is_terminal

    def isatty(self) -> bool:
        return self.is_terminal


@pytest.mark.parametrize("is_terminal", [True, False])
def test_epochs_show_a_batch_progress_bar_only_on_a_terminal(tiny_data, tiny_graphs, make_config, monkeypatch,
                                                            caplog, is_terminal):
    cfg = make_config("VBPR", train={"epochs": 2})
    stderr = _Terminal(is_terminal)
    monkeypatch.setattr(sys, "stderr", stderr)
    with caplog.at_level(logging.INFO, logger="pipeline.trainer"):
        train(build_model(cfg, tiny_data, tiny_graphs), tiny_data, cfg, torch.device("cpu"))
    n_batches = -(-len(tiny_data.train) // cfg.train.batch_size)
    bars = stderr.getvalue()
    if is_terminal:
        # tqdm redraws at most every 0.1 s: these tiny epochs show the bar's first frame (count, ETA)
        for epoch in (0, 1):
            assert f"epoch {epoch}:   0%|" in bars and f"| 0/{n_batches} [00:00<?, ?batch/s]" in bars
    else:
        assert bars == ""
    assert [r.getMessage().split()[:2] for r in caplog.records] == [["epoch", "0"], ["epoch", "1"]]


# ---------------------------------------------------------------- every model, in process


def _train_from(cfg, data, graphs, state=None, keep=None):
    """Train a freshly built objective (resumed from `state` if given); `keep` collects each saved state."""
    torch.manual_seed(cfg.seed)
    objective = build_model(cfg, data, graphs)

    def save(s):
        buffer = io.BytesIO()
        torch.save(s, buffer)
        keep.append(buffer.getvalue())

    return train(objective, data, cfg, torch.device("cpu"), resume_from=state,
                 save_state=save if keep is not None else None)


@pytest.mark.parametrize("model", [b + v for b in ("VBPR", "MMGCN", "GRCN", "BM3", "FREEDOM") for v in ("", "c", "a")])
def test_resuming_from_any_saved_epoch_gives_the_same_run(tiny_data, tiny_graphs, make_config, model):
    cfg = make_config(model, train={"epochs": 3, "stopping_step": 5})
    states: list[bytes] = []
    full = _train_from(cfg, tiny_data, tiny_graphs, keep=states)
    assert len(states) == 3
    for saved in states[:2]:  # after epoch 0 (the best so far), after epoch 1
        resumed = _train_from(cfg, tiny_data, tiny_graphs, state=torch.load(io.BytesIO(saved), weights_only=True))
        assert (resumed.best_epoch, resumed.epochs_run, resumed.status) == (full.best_epoch, full.epochs_run, full.status)
        assert resumed.valid == full.valid and resumed.test == full.test
        assert all(torch.equal(resumed.best_state[k], v) for k, v in full.best_state.items())
