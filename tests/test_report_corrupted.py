"""The report's 'trained on corrupted features' section, on hand-made metrics records."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from pipeline.report import corruption_groups
from pipeline.seed_stats import mean_std

from test_report import write_tuning
from pipeline.stages.report import build_report

SEEDS = [1, 2]
CLEAN_R20 = {"M": [0.10, 0.14], "Mc": [0.12, 0.14], "Ma": [0.11, 0.13]}
# Share of the clean recall kept on each corrupted dataset: the base loses most, DVIBa least.
KEPT = {"ds": {"M": 1.0, "Mc": 1.0, "Ma": 1.0},
        "ds_img50": {"M": 0.8, "Mc": 0.9, "Ma": 0.95},
        "ds_img50_txt": {"M": 0.6, "Mc": 0.8, "Ma": 0.9}}
LINEAGE = {"ds_img50": ("ds", "image: noise 1σ on 50% of items"),
           "ds_img50_txt": ("ds", "image: noise 1σ on 50% of items then text: removed (mean vector)")}


def _record(kind: str, model: str, r20: float) -> dict:
    if kind == "robustness":
        conditions = {"noise@0": {"recall@20": r20, "ndcg@20": r20 / 2}, "noise@1": {"recall@20": r20 / 2,
                                                                                     "ndcg@20": r20 / 4}}
        return {"model": model, "scores_respond_to_features": True, "clean_matches_checkpoint": True,
                "conditions": conditions}
    test = {"recall@10": r20 / 2, "recall@20": r20, "ndcg@10": r20 / 3, "ndcg@20": r20 / 2,
            "recall@5": r20 / 5, "precision@5": r20 / 6, "map@5": r20 / 7, "ndcg@5": r20 / 8}
    return {"model": model, "status": "max_epochs", "best_epoch": 3, "random_recall@20": 0.04, "test": test}


@pytest.fixture(scope="module")
def metrics(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corrupted") / "metrics"
    for dataset, kept in KEPT.items():
        for model, recalls in CLEAN_R20.items():
            for seed, r20 in zip(SEEDS, recalls):
                for kind in ("table", "robustness"):
                    path = root / kind / dataset / model / f"seed{seed}.json"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(_record(kind, model, r20 * kept[model])))
                curve = root / "curves" / dataset / model / f"seed{seed}" / "plots/metrics/valid/recall@20.tsv"
                curve.parent.mkdir(parents=True, exist_ok=True)
                curve.write_text(f"step\trecall@20\n0\t{r20 * kept[model]}\n")
            write_tuning(root / "tune" / dataset / f"{model}.json")
    build_report(root, list(KEPT), ["M"], ["", "c", "a"], SEEDS, LINEAGE)
    return root


def test_groups_need_the_clean_dataset_in_the_table():
    assert corruption_groups(["ds", "ds_img50", "ds_img50_txt"], LINEAGE) == {"ds": ["ds_img50", "ds_img50_txt"]}
    assert corruption_groups(["ds_img50", "other"], LINEAGE) == {}


def test_markdown_section_shows_each_level_with_seed_spread_and_change_against_clean(metrics):
    text = (metrics / "summary.md").read_text()
    section = text[text.index("## Trained on corrupted features"):]
    assert "- level 1: `ds_img50`: image: noise 1σ on 50% of items" in section
    assert "- level 2: `ds_img50_txt`: image: noise 1σ on 50% of items then text: removed (mean vector)" in section
    assert "| Model | ds (clean) | ds_img50 (level 1) | ds_img50_txt (level 2) |" in section
    recall_table = section[section.index("Test R@20:"):section.index("Test N@20:")]
    rows = {line.split(" | ")[0].strip("| "): line for line in recall_table.splitlines() if line.startswith("| M")}
    for model, label in (("M", "M"), ("Mc", "M +DVIBc"), ("Ma", "M +DVIBa")):
        clean_mean, clean_std = mean_std(CLEAN_R20[model])
        cells = [f"{clean_mean:.4f} ± {clean_std:.4f}"]
        for dataset in ("ds_img50", "ds_img50_txt"):
            mean, std = mean_std([r * KEPT[dataset][model] for r in CLEAN_R20[model]])
            cells.append(f"{mean:.4f} ± {std:.4f} ({100 * (KEPT[dataset][model] - 1):+.1f}%)")
        assert rows[label].startswith(f"| {label} | {' | '.join(cells)} |"), rows[label]
    assert "(-40.0%)" in rows["M"] and "(-10.0%)" in rows["M +DVIBa"]
    assert "![M trained on corrupted ds: R@20 against level](figures/corrupted_ds_M.png)" in section


def test_csv_and_figure_per_clean_dataset_and_base(metrics):
    with (metrics / "plots" / "corrupted" / "ds_M.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["level", "dataset", "variant", "recall@20"]
    assert [r["level"] for r in rows[:3]] == ["0", "1", "2"] and [r["dataset"] for r in rows[:3]] == list(KEPT)
    assert [r["variant"] for r in rows] == ["base"] * 3 + ["DVIBc"] * 3 + ["DVIBa"] * 3
    for row in rows:
        model = {"base": "M", "DVIBc": "Mc", "DVIBa": "Ma"}[row["variant"]]
        expected = mean_std([r * KEPT[row["dataset"]][model] for r in CLEAN_R20[model]])[0]
        assert float(row["recall@20"]) == pytest.approx(expected, abs=1e-6)
    assert (metrics / "figures" / "corrupted_ds_M.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_section_without_derived_datasets_of_a_table_dataset(metrics, tmp_path):
    root = tmp_path / "metrics"
    shutil.copytree(metrics, root)
    build_report(root, ["ds", "ds_img50"], ["M"], ["", "c", "a"], SEEDS, lineage={})
    assert "Trained on corrupted features" not in (root / "summary.md").read_text()
    assert not list((root / "plots" / "corrupted").iterdir())
    assert not list((root / "figures").glob("corrupted_*"))
