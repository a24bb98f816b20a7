"""End to end: the DVC pipeline in a temporary git repository, on tiny data for 2 epochs."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_project

ROOT = Path(__file__).resolve().parents[1]


def _tiny_params(params: dict) -> dict:
    params["synthetic"].update(n_users=60, n_items=80, latent_dim=8, image_dim=48, text_dim=24, mean_interactions=10.0)
    params["train"].update(epochs=2, batch_size=256, threads=1, device="cpu")
    params["graphs"]["knn_k"] = 5
    params["table"].update(bases=["VBPR", "FREEDOM"], seeds=[999, 1000])
    return params


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("dvc_project")
    copy_project(work)
    params = _tiny_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    home = tmp_path_factory.mktemp("home")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(tmp_path_factory.mktemp("dvc_site")),
        "HOME": str(home),
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=work, env=env, check=True)
    return work, env


def dvc(repo, *args) -> str:
    work, env = repo
    proc = subprocess.run(["dvc", *args], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_repro_trains_table_and_writes_summary(repo):
    work, _ = repo
    dvc(repo, "repro")
    params = yaml.safe_load((work / "params.yaml").read_text())
    table = params["table"]
    for base in table["bases"]:
        for variant in table["variants"]:
            summary = json.loads((work / "metrics" / "synthetic" / f"{base}{variant}.json").read_text())
            assert summary["seeds"] == len(table["seeds"]) and 0.0 <= summary["test"]["recall@20"] <= 1.0
            assert set(summary) == {"test", "test_std", "valid", "best_epoch", "epochs_run", "seeds"}
            for seed in table["seeds"]:
                run = Path("synthetic") / f"{base}{variant}" / f"seed{seed}.json"
                metrics = json.loads((work / "metrics" / "table" / run).read_text())
                assert metrics["model"] == f"{base}{variant}" and metrics["seed"] == seed
                assert 0.0 <= metrics["test"]["recall@20"] <= 1.0
                robustness = json.loads((work / "metrics" / "robustness" / run).read_text())
                assert "noise@0" in robustness["conditions"]
        assert (work / "metrics" / "figures" / f"robustness_synthetic_{base}.png").is_file()
        assert (work / "metrics" / "plots" / "robustness" / f"synthetic_{base}.csv").is_file()
        assert (work / "metrics" / "plots" / "curves" / f"synthetic_{base}.csv").is_file()
    assert json.loads((work / "metrics" / "train_full.json").read_text())["model"] == params["model"]
    shown = dvc(repo, "metrics", "show")
    assert len(shown.splitlines()) < 100 and "train.json" in shown and "summary.json" not in shown
    assert (work / "metrics" / "summary.json").is_file() and (work / "metrics" / "summary.md").is_file()
    assert (work / "dvc.lock").is_file()
    assert "didn't change" in dvc(repo, "status") or "up to date" in dvc(repo, "status")
    subprocess.run(["git", "add", "-A"], cwd=work, env=repo[1], check=True)
    subprocess.run(["git", "commit", "-qm", "repro"], cwd=work, env=repo[1], check=True)


def test_exp_run_reruns_only_the_selected_model_and_metrics_diff_shows_it(repo):
    work, _ = repo
    out = dvc(repo, "exp", "run", "-S", "model=VBPRa")
    assert "Running stage 'train'" in out
    assert "Running stage 'table" not in out and "Running stage 'data'" not in out
    assert json.loads((work / "metrics" / "train_full.json").read_text())["model"] == "VBPRa"
    diff = dvc(repo, "metrics", "diff", "--json")
    assert "metrics/train.json" in json.loads(diff)


def tree_digest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_bad_parameter_fails_first_and_deletes_nothing(repo):
    work, env = repo
    before = {name: tree_digest(work / name) for name in ("metrics", "models")}
    params = (work / "params.yaml").read_text()
    proc = subprocess.run(["dvc", "exp", "run", "-S", "train.batch_size=0"], cwd=work, env=env,
                          capture_output=True, text=True)
    (work / "params.yaml").write_text(params)  # what `git checkout params.yaml` does after a commit
    assert proc.returncode != 0
    assert "train.batch_size: expected a value >= 1, got 0" in proc.stdout + proc.stderr
    assert "Running stage 'validate'" in proc.stdout and "Running stage 'train'" not in proc.stdout
    assert {name: tree_digest(work / name) for name in ("metrics", "models")} == before
    assert json.loads(dvc(repo, "status", "--json")) == {}  # with params.yaml restored, nothing is stale


# One file per layer: config, data, models, training, stages.
LAYER_FILES = ("pipeline/config.py", "pipeline/dataset.py", "pipeline/models/vbpr.py", "pipeline/trainer.py",
               "pipeline/stages/report.py")


@pytest.mark.parametrize("path", LAYER_FILES)
def test_editing_a_file_makes_exactly_its_importers_stale(repo, path):
    from test_dvc_graph import import_closure, stage_definitions, stage_module

    work, env = repo
    importers = {name for name, stage in stage_definitions().items() if path in import_closure(stage_module(stage))}
    every_stage = dvc(repo, "stage", "list", "--name-only").split()
    original = (work / path).read_text()
    (work / path).write_text(original + "\n# an edit\n")
    try:
        stale = set(json.loads(dvc(repo, "status", "--json")))
    finally:
        (work / path).write_text(original)
    assert stale == {name for name in every_stage if name.split("@")[0] in importers}
    assert stale, f"editing {path} made no stage stale"
