"""DVC with a derived dataset in the table: changing its `corrupt:` re-runs data, graphs and its cells only."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_project
from tests.test_pipeline_dvc import ROOT, dvc

DERIVED = "synthetic_img50"


def _params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synthetic"].update(n_users=50, n_items=60, latent_dim=8, image_dim=32, text_dim=16, mean_interactions=10.0)
    params["train"].update(epochs=1, batch_size=256, threads=1, device="cpu")
    params["graphs"]["knn_k"] = 5
    params["datasets"][DERIVED] = {"source": "derived", "from": "synthetic", "seed": 1,
                                   "corrupt": {"image": {"noise": 1.0, "fraction": 0.5}}}
    params["table"].update(datasets=["synthetic", DERIVED], bases=["VBPR"], variants=[""], seeds=[999])
    params["robustness"].update(noise_levels=[0.0, 1.0], remove_modalities=["image"], drop_fractions=[0.5])
    return params


def _environment(tmp_path_factory) -> dict:
    """Quiet DVC with its state in temporary folders; git identity for the commits."""
    identity = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
                for what, value in (("NAME", "test"), ("EMAIL", "test@example.com"))}
    return {**os.environ, **identity, "DVC_NO_ANALYTICS": "1", "HOME": str(tmp_path_factory.mktemp("home")),
            "DVC_SITE_CACHE_DIR": str(tmp_path_factory.mktemp("dvc_site")),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    work = tmp_path_factory.mktemp("dvc_derived")
    copy_project(work)
    (work / "params.yaml").write_text(yaml.safe_dump(_params(), sort_keys=False))
    env = _environment(tmp_path_factory)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=work, env=env, check=True)
    return work, env


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_changing_corrupt_reruns_data_graphs_and_the_derived_cells_only(project):
    work, env = project
    dvc(project, "repro", "report")  # everything but the single-experiment `train` stage
    summary = (work / "metrics" / "summary.md").read_text()
    assert "## Trained on corrupted features" in summary and f"`{DERIVED}`: image: noise 1σ on 50% of items" in summary
    assert (work / "metrics" / "plots" / "corrupted" / "synthetic_VBPR.csv").is_file()
    subprocess.run(["git", "add", "-A"], cwd=work, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "repro"], cwd=work, env=env, check=True)
    datasets = work / "data" / "datasets"
    before = {name: _digest(datasets / name / "image_feat.npy") for name in ("synthetic", DERIVED)}

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["datasets"][DERIVED]["corrupt"]["image"]["noise"] = 2.0
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(project, "repro", "report")

    ran = set(re.findall(r"Running stage '([^']+)'", out))
    assert {"data", "graphs", "report"} <= ran
    assert {s for s in ran if s.startswith(("table@", "robustness@"))} == {
        f"{kind}@{DERIVED}-VBPR-" for kind in ("table", "robustness")
    }
    assert _digest(datasets / "synthetic" / "image_feat.npy") == before["synthetic"]
    assert _digest(datasets / DERIVED / "image_feat.npy") != before[DERIVED]
