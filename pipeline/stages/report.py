"""Stage `report`: aggregate the full table's metrics into metrics/summary.json and summary.md.

Params: table. Reads metrics/<dataset>/<model>.json for every dataset × base × variant.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.atomic import write_json, write_text
from pipeline.config import read_params, section
from pipeline.stages.common import setup_logging

COLUMNS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@5", "map@5")


def collect(datasets: list[str], bases: list[str], variants: list[str], root: Path) -> dict:
    """{dataset: {model: metrics dict}} read from the per-run metrics files."""
    summary: dict = {}
    for dataset in datasets:
        for base in bases:
            for variant in variants:
                path = root / dataset / f"{base}{variant}.json"
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: missing; run `dvc repro` to train {base}{variant} on {dataset}")
                summary.setdefault(dataset, {})[f"{base}{variant}"] = json.loads(path.read_text())
    return summary


def markdown_table(dataset: str, runs: dict, bases: list[str], variants: list[str]) -> str:
    """One Markdown table per dataset: test metrics, relative change of Recall@20 against the base."""
    header = ["model", *COLUMNS, "Δ R@20 vs base", "best epoch", "status", "train s"]
    lines = [f"### {dataset}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    random = next(iter(runs.values()))["random_recall@20"]
    for base in bases:
        base_recall = runs[base]["test"].get("recall@20") if base in runs else None
        for variant in variants:
            run = runs[f"{base}{variant}"]
            test = run["test"]
            values = [f"{test[c]:.4f}" if c in test else "—" for c in COLUMNS]
            delta = (
                f"{100 * (test['recall@20'] / base_recall - 1):+.1f}%"
                if variant and base_recall and "recall@20" in test else ""
            )
            lines.append(
                "| " + " | ".join([f"{base}{variant}", *values, delta, str(run["best_epoch"]), run["status"],
                                   f"{run['train_seconds']:.1f}"]) + " |"
            )
    lines += ["", f"Random ranking, expected test Recall@20: {random:.4f}", ""]
    return "\n".join(lines)


def main() -> int:
    setup_logging()
    table = section(read_params(), "table")
    datasets, bases, variants = table["datasets"], table["bases"], table["variants"]
    summary = collect(datasets, bases, variants, Path("metrics"))
    compact = {
        dataset: {model: {"status": r["status"], "best_epoch": r["best_epoch"], **r["test"]} for model, r in runs.items()}
        for dataset, runs in summary.items()
    }
    write_json("metrics/summary.json", compact)
    body = "\n".join(markdown_table(d, summary[d], bases, variants) for d in datasets)
    write_text("metrics/summary.md", "# Test metrics at the best-validation epoch\n\n" + body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
