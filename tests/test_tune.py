"""Per-cell tuning on Ray Tune: grid expansion, selection on validation, failures, the cluster path, DVC."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: everything on loopback

import ray  # noqa: E402

from pipeline.config import ConfigError, experiment_config, read_params  # noqa: E402
from pipeline.dataset import load_mmrec, write_mmrec  # noqa: E402
from pipeline.graphs import write_graphs  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.graphs import load_graphs  # noqa: E402
from pipeline.stages.tune import cell_spec, tune_cell  # noqa: E402
from pipeline.synthetic import write_synthetic  # noqa: E402
from pipeline.runtime import configure_runtime  # noqa: E402
from pipeline.trainer import train  # noqa: E402
from pipeline.tuning import AllTrialsFailed, CellSpec, run_grid, select_best  # noqa: E402
from pipeline.tuning_config import apply_overrides, expand_grid, tune_settings, tuned_params  # noqa: E402

from conftest import TINY, copy_project  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRIC = "recall@20"
GRID = {"train.learning_rate": [0.001, 0.02], "models.VBPR.reg_weight": [0.0001, 0.5]}


def _tiny_params() -> dict:
    params = read_params(ROOT / "params.yaml")
    params["train"].update(epochs=3, batch_size=128, device="cpu", threads=1)
    params["tune"].update(num_cpus=2, storage=".ray/tune")
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder with the tiny dataset and its graphs where the stages expect them."""
    root = tmp_path_factory.mktemp("tune_project")
    data_dir = root / "data" / "datasets" / "tiny"
    write_synthetic(data_dir, TINY, seed=7)
    write_graphs(root / "data" / "graphs" / "tiny", load_mmrec(data_dir), knn_k=5)
    return root


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray with 2 CPUs for the library tests of this module."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield
    ray.shutdown()


def _spec(project: Path, points, dataset="tiny", epochs=3) -> CellSpec:
    params = _tiny_params()
    params["train"]["epochs"] = epochs
    trial_params = {k: params[k] for k in ("seed", "train", "eval", "dvib")} | {"models": {"VBPR": params["models"]["VBPR"]}}
    return CellSpec(model="VBPR", dataset="tiny", params=trial_params, points=tuple(points),
                    data_dir=str(project / "data" / "datasets" / dataset),
                    graphs_dir=str(project / "data" / "graphs" / dataset), cpus_per_trial=1.0)


def _run(project: Path, points, name: str, dataset="tiny") -> list[dict]:
    settings = tune_settings(_tiny_params())
    return run_grid(_spec(project, points, dataset), settings, METRIC, project / ".ray" / name)


@pytest.fixture(scope="module")
def four_points(project, local_ray) -> list[dict]:
    return _run(project, expand_grid(GRID), "four")


def test_expand_grid_is_the_product_with_the_last_axis_fastest():
    points = expand_grid({"a.x": [1, 2], "b": ["p", "q", "r"]})
    assert points == [{"a.x": 1, "b": "p"}, {"a.x": 1, "b": "q"}, {"a.x": 1, "b": "r"},
                      {"a.x": 2, "b": "p"}, {"a.x": 2, "b": "q"}, {"a.x": 2, "b": "r"}]


def test_apply_overrides_sets_paths_on_a_copy_and_names_an_unknown_path():
    params = {"train": {"learning_rate": 0.001}, "models": {"GRCN": {"reg_weight": 0.1}}}
    out = apply_overrides(params, {"train.learning_rate": 0.5, "models.GRCN.reg_weight": 0.0})
    assert out == {"train": {"learning_rate": 0.5}, "models": {"GRCN": {"reg_weight": 0.0}}}
    assert params["train"]["learning_rate"] == 0.001
    with pytest.raises(ConfigError, match=r"grid axis 'models\.GRCN\.reg_wieght'.*no key 'reg_wieght' under models\.GRCN"):
        apply_overrides(params, {"models.GRCN.reg_wieght": 1.0})


def test_unknown_cell_and_bad_grid_are_clear_errors(project, monkeypatch):
    monkeypatch.chdir(project)
    params = _tiny_params()
    with pytest.raises(ConfigError, match="tune.grids: no grids for dataset 'tiny'"):
        tune_cell("VBPR", "tiny", params)
    params["tune"]["grids"]["tiny"] = {"VBPR": {"train.lr": [0.1]}}
    with pytest.raises(ConfigError, match="grid axis 'train.lr'"):
        tune_cell("VBPR", "tiny", params)


def test_trials_train_within_the_dataset_epoch_budget(project, monkeypatch):
    monkeypatch.chdir(project)
    params = _tiny_params()
    params["tune"]["grids"]["tiny"] = {"VBPR": GRID}
    for budgets, epochs in (({"tiny": 2}, 2), ({"tiny": 50}, 3), ({"synthetic": 2}, 3), (None, 3)):
        params["tune"]["max_epochs"] = budgets
        spec = cell_spec(params, "VBPR", "tiny", tune_settings(params))
        assert spec.params["train"]["epochs"] == epochs and len(spec.points) == 4


def test_four_point_grid_selects_the_validation_argmax(four_points):
    assert [t["params"] for t in four_points] == expand_grid(GRID)
    assert all(t["status"] == "ok" and t["error"] is None for t in four_points)
    for t in four_points:
        assert set(t) == {"params", "status", "valid", "test", "best_epoch", "epochs_run", "seconds", "error"}
        assert 0.0 <= t["test"][METRIC] <= 1.0 and t["epochs_run"] == 3 and 0 <= t["best_epoch"] < 3
    scores = [t["valid"][METRIC] for t in four_points]
    assert len(set(scores)) > 1, "the grid's points should not all score the same"
    best = select_best(four_points, METRIC)
    assert best == four_points[scores.index(max(scores))]


def test_trial_metrics_equal_the_plain_trainer(project, four_points):
    point = four_points[1]["params"]
    cfg = experiment_config(apply_overrides(_tiny_params(), point), "VBPR", "tiny")
    configure_runtime(1)
    torch.manual_seed(cfg.seed)
    data = load_mmrec(project / "data" / "datasets" / "tiny")
    objective = build_model(cfg, data, load_graphs(project / "data" / "graphs" / "tiny"))
    result = train(objective, data, cfg, torch.device("cpu"))
    assert result.valid == four_points[1]["valid"] and result.test == four_points[1]["test"]
    assert result.best_epoch == four_points[1]["best_epoch"]


def test_choice_does_not_change_when_the_test_split_changes(project, four_points):
    frame = pd.read_csv(project / "data" / "datasets" / "tiny" / "tiny.inter", sep="\t")
    test_rows = frame["x_label"] == 2
    frame.loc[test_rows, "itemID"] = np.roll(frame.loc[test_rows, "itemID"].to_numpy(), 7)  # same items, other users
    data = load_mmrec(project / "data" / "datasets" / "tiny")
    altered = project / "data" / "datasets" / "tiny_test"
    write_mmrec(altered, frame, data.image_features, data.text_features)
    shutil.copytree(project / "data" / "graphs" / "tiny", project / "data" / "graphs" / "tiny_test")
    trials = _run(project, expand_grid(GRID), "altered", dataset="tiny_test")
    assert [t["valid"] for t in trials] == [t["valid"] for t in four_points]
    assert [t["test"] for t in trials] != [t["test"] for t in four_points]
    assert select_best(trials, METRIC)["params"] == select_best(four_points, METRIC)["params"]


def test_failing_trials_are_reported_and_never_selected(project, local_ray):
    points = [{"train.learning_rate": 0.02}, {"train.learning_rate": -1.0}, {"dvib.consistency_weight": 2.0}]
    trials = _run(project, points, "failing")
    assert [t["status"] for t in trials] == ["ok", "failed", "failed"]
    assert trials[1]["error"] == "ConfigError: params.yaml: train.learning_rate: expected a value >= 0, got -1.0"
    assert "consistency_weight" in trials[2]["error"] and trials[2]["valid"] == {}
    assert select_best(trials, METRIC)["params"] == points[0]
    with pytest.raises(AllTrialsFailed, match=r"(?s)2 trials failed.*learning_rate.*consistency_weight"):
        select_best(trials[1:], METRIC)


def test_asha_stops_weak_trials_which_are_recorded_and_never_selected(project, local_ray):
    # Strong learning rates first: the weak ones then reach each rung below them and are stopped.
    points = [{"train.learning_rate": lr} for lr in (0.05, 0.02, 0.00001, 0.000005)]
    params = _tiny_params()
    params["tune"].update(scheduler="asha", asha={"grace_period": 1, "reduction_factor": 2})
    trials = run_grid(_spec(project, points, epochs=8), tune_settings(params), METRIC, project / ".ray" / "asha")
    stopped = [t for t in trials if t["status"] == "stopped"]
    assert stopped and all(t["test"] == {} and t["valid"] for t in stopped)
    assert any(t["epochs_run"] < 8 for t in stopped)
    assert select_best(trials, METRIC)["status"] == "ok" and select_best(trials, METRIC)["params"] in points[:2]


def test_a_saved_experiment_is_restored_with_its_finished_trials(project, four_points):
    # The same experiment folder again (what a re-run after a kill finds): Tune restores, trains nothing.
    assert _run(project, expand_grid(GRID), "four") == four_points


def _ray_processes(marker: str) -> list[str]:
    """Command lines of live processes that mention `marker` (a Ray temp folder)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in text:
            found.append(text)
    return found


def test_sigterm_stops_the_stage_and_its_ray_and_writes_nothing(project, tmp_path):
    work = tmp_path / "stage"
    work.mkdir()
    (work / "data").symlink_to(project / "data")
    params = _tiny_params()
    # Trials that cannot end by themselves (no epoch limit in reach, no early stop), so the signal
    # always finds them training.
    params["train"].update(epochs=1_000_000, stopping_step=1_000_000)
    params["tune"]["grids"]["tiny"] = {"VBPR": GRID}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # Ray's socket paths must stay short
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(ray_tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.stages.tune", "--model", "VBPR", "--dataset", "tiny"],
                            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(work.glob(".ray/tune/*/run_trial*/progress.csv")) and time.monotonic() < deadline:
            time.sleep(0.5)  # until a trial has reported an epoch
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    assert "interrupted" in output and not (work / "metrics").exists()
    deadline = time.monotonic() + 15  # Ray's processes exit on their own once the stage has shut it down
    while _ray_processes(str(ray_tmp)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ray_processes(str(ray_tmp)) == []
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_second_ray_node_takes_trials_of_the_stage(project, monkeypatch, caplog):
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the module's local Ray: this test brings its own two-node cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        monkeypatch.chdir(project)
        params = _tiny_params()
        params["tune"]["address"] = cluster.address
        params["tune"]["grids"]["tiny"] = {"VBPR": GRID}
        with caplog.at_level(logging.INFO, logger="pipeline.tuning"):
            outcome = tune_cell("VBPR", "tiny", params)
        assert not ray.is_initialized()  # the stage disconnected
        nodes = set(re.findall(r"on Ray node (\w+)", caplog.text))
        assert len(nodes) == 2, caplog.text
        written = json.loads((project / "metrics" / "tune" / "tiny" / "VBPR.json").read_text())
        assert written == json.loads(json.dumps(outcome)) and written["best"] == select_best(written["trials"], METRIC)
        assert tuned_params("tiny", "VBPR", project / "metrics" / "tune") == written["best"]["params"]
        assert not list((project / ".ray" / "tune").iterdir())  # a finished cell keeps no Ray experiment
    finally:
        ray.shutdown()
        cluster.shutdown()


# ---- DVC integration: tune, then the table at the tuned point; one cell's grid change re-runs one cell ----

def _dvc(work: Path, env: dict, *args) -> str:
    proc = subprocess.run(["dvc", *args], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_dvc_repro_tunes_then_trains_the_table_and_reruns_only_a_changed_cell(tmp_path):
    ray.shutdown()
    work = tmp_path / "repo"
    copy_project(work)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synthetic"].update(n_users=60, n_items=80, latent_dim=8, image_dim=48, text_dim=24, mean_interactions=10.0)
    params["train"].update(epochs=2, batch_size=256, threads=1, device="cpu")
    params["graphs"]["knn_k"] = 5
    params["table"].update(bases=["VBPR", "FREEDOM"], variants=[""], seeds=[999])
    params["tune"]["num_cpus"] = 2
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc_site"), "HOME": str(tmp_path / "home"),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=work, env=env, check=True)

    out = _dvc(work, env, "repro", "report")  # everything but the single-experiment `train` stage
    assert out.index("Running stage 'tune@synthetic-FREEDOM-'") < out.index("Running stage 'table@synthetic-FREEDOM-'")
    for base in ("VBPR", "FREEDOM"):
        tuned = yaml.safe_load((work / "metrics" / "tune" / "synthetic" / f"{base}.best.yaml").read_text())
        trials = json.loads((work / "metrics" / "tune" / "synthetic" / f"{base}.json").read_text())
        assert tuned == trials["best"]["params"] and len(trials["trials"]) == 2
        checkpoint = torch.load(work / "models" / "table" / "synthetic" / base / "seed999.pt", weights_only=False)
        for path, value in tuned.items():  # the table trained at the tuned point
            assert path.startswith(f"models.{base}.")
            assert checkpoint["config"]["model_params"][path.rsplit(".", 1)[1]] == value
    assert "## Selection" in (work / "metrics" / "summary.md").read_text()

    params["tune"]["grids"]["synthetic"]["FREEDOM"] = {"models.FREEDOM.reg_weight": [0.01]}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _dvc(work, env, "repro", "report")
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    assert ran == {"validate", "tune@synthetic-FREEDOM-", "table@synthetic-FREEDOM-", "robustness@synthetic-FREEDOM-",
                   "report"}  # validate checks every grid; its output does not change, so nothing else re-runs
    checkpoint = torch.load(work / "models" / "table" / "synthetic" / "FREEDOM" / "seed999.pt", weights_only=False)
    assert checkpoint["config"]["model_params"]["reg_weight"] == 0.01
    assert not [p for p in (work / ".ray").rglob("*") if p.is_dir() and p.parent.name == "tune"]
