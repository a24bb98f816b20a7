"""The report's numbers equal those of the metrics files, and its plots render offline."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, table_config
from pipeline.report import compare
from pipeline.seed_stats import mean_std
from pipeline.stages.report import build_report

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / ".dvc/plots/offline.html"
SEEDS = [1, 2, 3]
# recall@20 per seed: the c variant is the base + 0.03 on every seed (beyond the spread), the a
# variant differs by +0.01, -0.02, +0.01 (mean 0: within the spread).
RECALL20 = {"M": [0.10, 0.12, 0.14], "Mc": [0.13, 0.15, 0.17], "Ma": [0.11, 0.10, 0.15]}
NOISE = {"noise@0": 1.0, "noise@0.5": 0.8, "noise@1": 0.5, "remove@image": 0.7, "drop@0.5": 0.9}


def write_tree(root: Path) -> None:
    """A metrics tree like the pipeline's: metrics/{table,robustness}/ds/<model>/seed<k>.json."""
    for model, recalls in RECALL20.items():
        for i, (seed, r20) in enumerate(zip(SEEDS, recalls)):
            test = {"recall@10": r20 / 2, "recall@20": r20, "ndcg@10": r20 / 3, "ndcg@20": r20 / 4,
                    "recall@5": r20 / 5, "precision@5": r20 / 6, "map@5": r20 / 7, "ndcg@5": r20 / 8}
            run = {"model": model, "status": "max_epochs", "best_epoch": 10 + i, "random_recall@20": 0.04,
                   "test": test}
            # Robustness: each condition scales the clean recall; model M reads no features at test time.
            conditions = {c: {"recall@20": r20 * f, "ndcg@20": r20 * f / 4} for c, f in NOISE.items()}
            if model == "M":
                conditions = {c: {"recall@20": r20, "ndcg@20": r20 / 4} for c in NOISE}
            robust = {"model": model, "scores_respond_to_features": model != "M", "clean_matches_checkpoint": True,
                      "conditions": conditions}
            for kind, record in (("table", run), ("robustness", robust)):
                path = root / kind / "ds" / model / f"seed{seed}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record))
            # Validation curves as dvclive writes them; seed 3 stops one epoch early.
            curve = root / "curves" / "ds" / model / f"seed{seed}" / "plots" / "metrics" / "valid" / "recall@20.tsv"
            curve.parent.mkdir(parents=True, exist_ok=True)
            epochs = range(3 if seed != 3 else 2)
            curve.write_text("step\trecall@20\n" + "".join(f"{e}\t{r20 * (e + 1) / 3}\n" for e in epochs))
        write_tuning(root / "tune" / "ds" / f"{model}.json")


def tuning_trial(reg: float, valid: float, test: float, status: str = "ok") -> dict:
    """A trial record as the tune stage writes it (recall@20 and ndcg@20 only)."""
    metrics = lambda r: {"recall@20": r, "ndcg@20": r / 2} if status == "ok" else {}  # noqa: E731
    return {"params": {"models.M.reg_weight": reg}, "status": status, "valid": metrics(valid), "test": metrics(test),
            "best_epoch": 3, "epochs_run": 5, "seconds": 1.0, "error": None if status == "ok" else "ValueError: x"}


def write_tuning(path: Path) -> None:
    """A cell's tuning record: validation picks reg 0.1 (test 0.20); the best test trial is reg 0.01 (0.26)."""
    trials = [tuning_trial(0.1, 0.30, 0.20), tuning_trial(0.01, 0.25, 0.26), tuning_trial(1.0, 0, 0, "failed")]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"trials": trials, "best": trials[0]}))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo") / "metrics"
    write_tree(root)
    summary = build_report(root, ["ds"], ["M"], ["", "c", "a"], SEEDS)
    return root, summary


def test_seed_statistics_and_comparison():
    mean, std = mean_std([0.10, 0.12, 0.14])
    assert mean == pytest.approx(0.12) and std == pytest.approx(0.02)
    assert mean_std([0.3]) == (0.3, 0.0)
    up = compare(RECALL20["M"], RECALL20["Mc"])
    assert up["relative_change_pct"] == pytest.approx(25.0) and up["beyond_seed_spread"] is True
    flat = compare(RECALL20["M"], RECALL20["Ma"])
    assert flat["beyond_seed_spread"] is False
    assert compare([0.1], [0.2])["beyond_seed_spread"] is None  # one seed: no spread


def test_summary_json_equals_the_metrics_files(report):
    root, summary = report
    on_disk = json.loads((root / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for model, recalls in RECALL20.items():
        s = on_disk["ds"][model]
        mean, std = mean_std(recalls)
        assert s["test"]["recall@20"] == pytest.approx(mean, abs=1e-12)
        assert s["test_std"]["recall@20"] == pytest.approx(std, abs=1e-12)
        assert s["test"]["ndcg@20"] == pytest.approx(mean / 4, abs=1e-12)
        assert s["n_seeds"] == 3 and s["best_epoch"] == 11 and isinstance(s["best_epoch"], int) and s["status"] == "max_epochs"
        assert s["robustness"]["recall@20"]["noise@1"] == pytest.approx(mean * (1.0 if model == "M" else 0.5))
    assert "relative_change_pct" not in on_disk["ds"]["M"]
    assert on_disk["ds"]["Mc"]["relative_change_pct"]["recall@20"] == pytest.approx(25.0)
    assert on_disk["ds"]["Mc"]["beyond_seed_spread"]["recall@20"] is True
    assert on_disk["ds"]["Ma"]["beyond_seed_spread"]["recall@20"] is False
    assert on_disk["ds"]["M"]["scores_respond_to_features"] is False


def test_markdown_shows_the_same_numbers(report):
    root, _summary = report
    md = (root / "summary.md").read_text()
    rows = {}
    for line in md.splitlines():  # the first row of each model is in the metrics table
        if line.startswith("| M"):
            rows.setdefault(line.split(" | ")[0].lstrip("| "), line)
    assert "| 0.1200 ± 0.0200 |" in rows["M"]  # R@20 of the base: mean ± std, no change
    assert "| 0.1500 ± 0.0200 (+25.0%†) |" in rows["M +DVIBc"]
    assert "0.1200 ± 0.0265 (+0.0%) |" in rows["M +DVIBa"]  # within the seed spread: no mark
    assert "R@10 | R@20 | N@10 | N@20 | R@5 | P@5 | MAP@5 | N@5" in md
    # The robustness table: clean, noise 0.5σ, noise 1σ, no image, drop 50%; M is flagged as feature-blind.
    assert "| Model | clean | noise 0.5σ | noise 1σ | no image | drop 50% |" in md
    robust = [line for line in md.splitlines() if line.startswith("| M +DVIBc | 0.1500 ± 0.0200 | 0.1200")]
    assert robust and "0.0750 ± 0.0100" in robust[0]
    assert "| M ‡ | 0.1200 ± 0.0200 |" in md
    assert "![M on ds: R@20 against noise level](figures/robustness_ds_M.png)" in md


def test_plot_data_is_long_format_with_one_row_per_variant(report):
    root, _summary = report
    with (root / "plots/robustness/ds_M.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["noise_level", "variant", "recall@20"]
    assert [(r["variant"], r["noise_level"]) for r in rows[:4]] == [("base", "0"), ("base", "0.5"), ("base", "1"),
                                                                     ("DVIBc", "0")]
    by_key = {(r["variant"], r["noise_level"]): float(r["recall@20"]) for r in rows}
    assert by_key[("DVIBc", "1")] == pytest.approx(0.15 * 0.5, abs=1e-6)
    assert by_key[("base", "1")] == pytest.approx(0.12, abs=1e-6)
    assert (root / "figures/robustness_ds_M.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_learning_curves_average_the_seeds_that_reached_each_epoch(report):
    root, _summary = report
    with (root / "plots/curves/ds_M.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    by_key = {(r["variant"], int(r["step"])): float(r["recall@20"]) for r in rows}
    assert len(rows) == 9 and [r["variant"] for r in rows[::3]] == ["base", "DVIBc", "DVIBa"]
    assert by_key[("DVIBc", 0)] == pytest.approx(sum(RECALL20["Mc"]) / 3 / 3, abs=1e-6)
    assert by_key[("base", 2)] == pytest.approx((0.10 + 0.12) / 2, abs=1e-6)  # seed 3 stopped after epoch 1


def test_missing_run_is_named(tmp_path):
    write_tree(tmp_path)
    (tmp_path / "robustness/ds/Ma/seed2.json").unlink()
    with pytest.raises(FileNotFoundError, match="robustness/ds/Ma/seed2.json"):
        build_report(tmp_path, ["ds"], ["M"], ["", "c", "a"], SEEDS)


def test_table_config_needs_seeds(params):
    assert list(table_config(params).seeds) == params["table"]["seeds"]
    broken = {**params, "table": {**params["table"], "seeds": []}}
    with pytest.raises(ConfigError, match="table.seeds: expected a non-empty list"):
        table_config(broken)


def test_offline_template_has_no_external_scripts():
    html = TEMPLATE.read_text()
    assert "{plot_divs}" in html and "{scripts}" not in html
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.IGNORECASE)
    assert len(html.encode()) < 2_000_000
    for package in ("vega@5", "vega-lite@5", "vega-embed@6"):
        assert package in html  # the provenance comment names each inlined build
    assert html.count("<script") == 3


def test_dvc_plots_show_renders_offline(report, tmp_path):
    """`dvc plots show` with the project's plot definitions and template: inline libraries, no CDN."""
    metrics_root, _summary = report
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/plots").symlink_to(metrics_root / "plots")
    project = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": project["plots"]}))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "site")}
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, env=env, check=True)
    (tmp_path / ".dvc/plots").mkdir(exist_ok=True)
    (tmp_path / ".dvc/plots/offline.html").write_text(TEMPLATE.read_text())
    (tmp_path / ".dvc/plots/variants.json").write_text((ROOT / ".dvc/plots/variants.json").read_text())
    subprocess.run([*dvc, "config", "plots.html_template", "plots/offline.html"], cwd=tmp_path, env=env, check=True)
    subprocess.run([*dvc, "plots", "show", "-o", "out"], cwd=tmp_path, env=env, check=True, capture_output=True)
    html = (tmp_path / "out/index.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.IGNORECASE)
    assert "vegaEmbed(" in html and "robustness/ds_M.csv" in html and "curves/ds_M.csv" in html
    for variant in ("base", "DVIBc", "DVIBa"):
        assert f'"variant": "{variant}"' in html
    assert html.count('"color": {"field": "variant"') == 2  # one colour per variant in both charts


def test_template_builder_inlines_in_load_order_and_refuses_unsafe_builds():
    from pipeline.plots_template import render_template

    packages = {name: ("1.0.0", "BSD-3-Clause", f"var {name.replace('-', '_')}=1;\n//# sourceMappingURL=x.map")
                for name in ("vega-embed", "vega", "vega-lite")}
    html = render_template(packages)
    assert html.index("var vega=1") < html.index("var vega_lite=1") < html.index("var vega_embed=1")
    assert "{plot_divs}" in html and "{refresh_tag}" in html and "sourceMappingURL" not in html
    with pytest.raises(ValueError, match="cannot be inlined"):
        render_template({**packages, "vega": ("1.0.0", "MIT", "s='</script>'")})
    with pytest.raises(ValueError, match="missing package"):
        render_template({"vega": packages["vega"]})


def test_selection_section_shows_ours_against_the_test_selected_trial(report):
    root, summary = report
    selection = summary["ds"]["Mc"]["selection"]
    assert selection["selected_on_valid"]["params"] == {"models.M.reg_weight": 0.1}
    assert selection["selected_on_test"]["params"] == {"models.M.reg_weight": 0.01}
    assert selection["gap"]["recall@20"] == pytest.approx(0.06) and (selection["trials"], selection["failed"]) == (3, 1)
    text = (root / "summary.md").read_text()
    assert "reference protocol (selected on test)" in text
    assert "| Mc | 3 (1) | 0.2000 | 0.1000 | 0.2600 | 0.1300 | +0.0600 | +0.0300 | models.M.reg_weight=0.1 |" in text
