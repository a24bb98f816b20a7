"""Stage `report`: the full table's summary over seeds, robustness curves, figures and DVC plot data.

Params: table (datasets, bases, variants, seeds), datasets (which of the table's datasets are
derived). Reads, for every dataset × base × variant × seed,
metrics/table/<dataset>/<model>/seed<k>.json (training run) and
metrics/robustness/<dataset>/<model>/seed<k>.json (test-time perturbations). Writes
- metrics/summary.json  {dataset: {model: seed means/stds, change vs base, robustness means}};
- metrics/summary.md    the paper-style tables (see pipeline/report.py for the conventions);
- metrics/figures/robustness_<dataset>_<base>.png  Recall@20 against noise level, base and variants
  (‡ in the title when the model's scores do not read the features at test time);
- metrics/plots/robustness/<dataset>_<base>.csv  the same curves for `dvc plots`, long format
  (noise_level, variant, recall@20), one colour per variant through the `variants` template;
- metrics/plots/curves/<dataset>_<base>.csv  validation Recall@20 per epoch of base, +DVIBc and
  +DVIBa (step, variant, recall@20; mean over the seeds that reached the epoch), from the table's
  dvclive curves under metrics/curves.
- when the table holds datasets derived from another of its datasets (params `datasets`, `source:
  derived`), the "trained on corrupted features" section: metrics/figures/corrupted_<clean>_<base>.png
  and metrics/plots/corrupted/<clean>_<base>.csv (level, dataset, variant, recall@20; level 0 = the
  clean dataset).
It also reads metrics/tune/<dataset>/<model>.json (every tuning trial) for the selection section:
our validation-selected trial against the test-selected one (the reference's protocol).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from pipeline.atomic import staged_directory, write_json, write_text
from pipeline.config import read_params, section, table_config
from pipeline.derived import lineage as dataset_lineage
from pipeline.report import (
    CURVE_METRIC, NO_FEATURES_MARK, NO_FEATURES_NOTE, corruption_curve, corruption_groups, corruption_markdown,
    display_name, markdown_report, model_name, noise_curve, selection_section, selection_summary, short_metric,
    summarise_dataset, variant_label,
)
from pipeline.stages.common import run_stage, setup_logging

log = logging.getLogger("pipeline.stages.report")
METRICS_DIR = Path("metrics")


def run_path(root: Path, kind: str, dataset: str, model: str, seed: int) -> Path:
    """metrics/<kind>/<dataset>/<model>/seed<k>.json, kind 'table' or 'robustness'."""
    return root / kind / dataset / model / f"seed{seed}.json"


def read_record(path: Path) -> dict:
    """One metrics file, with an error that says which run is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `dvc repro` to produce it")
    return json.loads(path.read_text())


def collect(root: Path, dataset: str, models: Sequence[str], seeds: Sequence[int], kind: str) -> dict[str, list[dict]]:
    """{model: [record per seed]} of one dataset, in seed order."""
    return {m: [read_record(run_path(root, kind, dataset, m, s)) for s in seeds] for m in models}


def robustness_frame(summary: Mapping[str, Mapping], base: str, variants: Sequence[str]) -> pd.DataFrame:
    """Long-format noise curves of one base: a row per (noise level, variant), mean over seeds."""
    rows = [
        {"noise_level": level, "variant": variant_label(v), CURVE_METRIC: mean}
        for v in variants
        for level, mean, _std in noise_curve(summary[model_name(base, v)])
    ]
    return pd.DataFrame(rows, columns=["noise_level", "variant", CURVE_METRIC])


def learning_curve_frame(root: Path, dataset: str, base: str, variants: Sequence[str],
                         seeds: Sequence[int]) -> pd.DataFrame:
    """Long-format validation learning curves of one base and its variants: a row per (epoch, variant),
    the mean over the seeds that reached that epoch."""
    frames = []
    for v in variants:
        for seed in seeds:
            tsv = (root / "curves" / dataset / model_name(base, v) / f"seed{seed}" / "plots" / "metrics" / "valid"
                   / f"{CURVE_METRIC}.tsv")
            if not tsv.is_file():
                raise FileNotFoundError(f"{tsv}: missing; run `dvc repro` to produce it")
            frames.append(pd.read_csv(tsv, sep="\t").assign(variant=variant_label(v)))
    curves = pd.concat(frames).groupby(["step", "variant"], sort=False, as_index=False)[CURVE_METRIC].mean()
    return curves.sort_values(["variant", "step"], key=_variant_order, kind="stable")[["step", "variant", CURVE_METRIC]]


def _variant_order(column: pd.Series) -> pd.Series:
    return column.map({"base": 0, "DVIBc": 1, "DVIBa": 2}) if column.name == "variant" else column


def save_curve_figure(path: Path, summary: Mapping[str, Mapping], dataset: str, base: str,
                      variants: Sequence[str]) -> None:
    """A PNG of the curve metric against noise level for a base and its variants (std over seeds as bars)."""
    curves = {v: noise_curve(summary[model_name(base, v)]) for v in variants}
    blind = not all(summary[model_name(base, v)]["scores_respond_to_features"] for v in variants)
    plot_variant_curves(path, curves, base, "noise level (× feature std)",
                        f"{base} on {dataset}" + (f" {NO_FEATURES_MARK}" if blind else ""),
                        note=NO_FEATURES_NOTE if blind else None)


def plot_variant_curves(path: Path, curves: Mapping[str, Sequence[tuple[float, float, float]]], base: str,
                        xlabel: str, title: str, xticks: Sequence[str] | None = None, note: str | None = None) -> None:
    """A PNG with one line per variant of (x, mean, std) points, std over seeds as error bars."""
    from matplotlib.figure import Figure  # the object API draws with Agg and touches no global backend

    figure = Figure(figsize=(5.0, 3.6), layout="constrained")
    axes = figure.subplots()
    for i, (variant, points) in enumerate(curves.items()):
        xs, means, stds = zip(*points)
        # Shift each variant slightly along x so that overlapping error bars stay readable.
        shift = (i - (len(curves) - 1) / 2) * 0.008 * (max(xs) - min(xs) or 1.0)
        axes.errorbar([x + shift for x in xs], means, yerr=stds, marker="o", capsize=3,
                      label=display_name(base, variant))
    if xticks is not None:
        axes.set_xticks(range(len(xticks)), xticks)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(f"test {short_metric(CURVE_METRIC)}")
    axes.set_title(title)
    if note:
        figure.text(0.01, 0.01, note, fontsize=7, alpha=0.8)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(path, format="png", dpi=120, metadata={"Software": None})


def corruption_frame(summaries: Mapping[str, Mapping], levels: Sequence[str], base: str,
                     variants: Sequence[str]) -> pd.DataFrame:
    """Long-format test curve metric of one base against corruption level: a row per (level, variant)."""
    rows = [
        {"level": i, "dataset": dataset, "variant": variant_label(v), CURVE_METRIC: mean}
        for v in variants
        for i, (dataset, (_level, mean, _std)) in enumerate(
            zip(levels, corruption_curve(summaries, levels, model_name(base, v), CURVE_METRIC)))
    ]
    return pd.DataFrame(rows, columns=["level", "dataset", "variant", CURVE_METRIC])


def save_corruption_figure(path: Path, summaries: Mapping[str, Mapping], levels: Sequence[str], base: str,
                           variants: Sequence[str]) -> None:
    """A PNG of the curve metric against corruption level (datasets as tick labels) for a base and its variants."""
    curves = {v: corruption_curve(summaries, levels, model_name(base, v), CURVE_METRIC) for v in variants}
    plot_variant_curves(path, curves, base, "training features (corruption level)",
                        f"{base} trained on corrupted {levels[0]}", xticks=levels)


def build_report(root: Path, datasets: list[str], bases: list[str], variants: list[str], seeds: list[int],
                 lineage: Mapping[str, tuple[str, str]] | None = None) -> dict:
    """Read every run, write summary.json, summary.md, figures and plot CSVs under `root`; return the summary.

    `lineage`: {derived dataset: (its clean dataset, its corruption)}, from pipeline.derived.lineage.
    """
    lineage = lineage or {}
    models = [model_name(b, v) for b in bases for v in variants]
    summaries = {
        dataset: summarise_dataset(
            collect(root, dataset, models, seeds, "table"), collect(root, dataset, models, seeds, "robustness"),
            bases, variants,
        )
        for dataset in datasets
    }
    figures: dict[str, dict[str, str]] = {}
    corruption_figures: dict[str, dict[str, str]] = {}
    with staged_directory(root / "figures") as figure_dir, staged_directory(root / "plots") as plot_dir:
        for kind in ("robustness", "curves", "corrupted"):
            (plot_dir / kind).mkdir()
        for dataset, summary in summaries.items():
            for base in bases:
                stem = f"{dataset}_{base}"
                save_curve_figure(figure_dir / f"robustness_{stem}.png", summary, dataset, base, variants)
                robustness_frame(summary, base, variants).to_csv(plot_dir / "robustness" / f"{stem}.csv",
                                                                index=False, float_format="%.6g")
                learning_curve_frame(root, dataset, base, variants, seeds).to_csv(
                    plot_dir / "curves" / f"{stem}.csv", index=False, float_format="%.6g")
                figures.setdefault(dataset, {})[base] = f"figures/robustness_{stem}.png"
        for clean, derived in corruption_groups(datasets, lineage).items():
            for base in bases:
                stem = f"{clean}_{base}"
                save_corruption_figure(figure_dir / f"corrupted_{stem}.png", summaries, [clean, *derived], base,
                                       variants)
                corruption_frame(summaries, [clean, *derived], base, variants).to_csv(
                    plot_dir / "corrupted" / f"{stem}.csv", index=False, float_format="%.6g")
                corruption_figures.setdefault(clean, {})[base] = f"figures/corrupted_{stem}.png"
    selections = {dataset: {m: selection_summary(read_record(root / "tune" / dataset / f"{m}.json")) for m in models}
                  for dataset in datasets}
    for dataset, by_model in selections.items():
        for model, selection in by_model.items():
            summaries[dataset][model]["selection"] = selection
    write_json(root / "summary.json", summaries)
    markdown = markdown_report(summaries, bases, variants, seeds, figures) + "\n" + selection_section(selections)
    corrupted = corruption_markdown(summaries, lineage, bases, variants, corruption_figures)
    write_text(root / "summary.md", f"{markdown}\n{corrupted}" if corrupted else markdown)
    return summaries


def run() -> None:
    params = read_params()
    table = table_config(params)
    lineage = dataset_lineage(list(table.datasets), section(params, "datasets"))
    build_report(METRICS_DIR, list(table.datasets), list(table.bases), list(table.variants), list(table.seeds),
                 lineage)
    print((METRICS_DIR / "summary.md").read_text())


def main() -> int:
    setup_logging()
    return run_stage(run, log)


if __name__ == "__main__":
    sys.exit(main())
