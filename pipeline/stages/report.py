"""Stage `report`: the full table's summary over seeds, robustness curves, figures and DVC plot data.

Params: table (datasets, bases, variants, seeds). Reads, for every dataset × base × variant × seed,
metrics/table/<dataset>/<model>/seed<k>.json (training run) and
metrics/robustness/<dataset>/<model>/seed<k>.json (test-time perturbations). Writes
- metrics/summary.json  {dataset: {model: seed means/stds, change vs base, robustness means}};
- metrics/summary.md    the paper-style tables (see pipeline/report.py for the conventions);
- metrics/figures/robustness_<dataset>_<base>.png  Recall@20 against noise level, base and variants;
- metrics/plots/robustness_<dataset>_<base>.csv    the same curves for `dvc plots show/diff`
  (columns noise_level, then one per variant: base, DVIBc, DVIBa).
It also reads metrics/tune/<dataset>/<model>.json (every tuning trial) for the selection section:
our validation-selected trial against the test-selected one (the reference's protocol).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.atomic import staged_directory, write_json, write_text
from pipeline.config import ConfigError, read_params, section
from pipeline.report import (
    CURVE_METRIC, display_name, markdown_report, model_name, noise_curve, selection_section, selection_summary,
    short_metric, summarise_dataset,
)
from pipeline.stages.common import setup_logging

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


def curve_columns(variants: Sequence[str]) -> dict[str, str]:
    """CSV column of each variant: 'base' for the plain model, 'DVIBc', 'DVIBa' (the same for every base)."""
    return {v: f"DVIB{v}" if v else "base" for v in variants}


def curves_csv(summary: Mapping[str, Mapping], base: str, variants: Sequence[str]) -> str:
    """CSV text of one base's noise curves: a row per noise level, a column per variant."""
    columns = curve_columns(variants)
    curves = {v: noise_curve(summary[model_name(base, v)]) for v in variants}
    levels = [level for level, _, _ in curves[variants[0]]]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["noise_level", *columns.values()])
    for i, level in enumerate(levels):
        writer.writerow([f"{level:g}", *(f"{curves[v][i][1]:.6f}" for v in variants)])
    return out.getvalue()


def save_curve_figure(path: Path, summary: Mapping[str, Mapping], dataset: str, base: str,
                      variants: Sequence[str]) -> None:
    """A PNG of the curve metric against noise level for a base and its variants (std over seeds as bars)."""
    from matplotlib.figure import Figure  # the object API draws with Agg and touches no global backend

    figure = Figure(figsize=(5.0, 3.6), layout="constrained")
    axes = figure.subplots()
    for i, variant in enumerate(variants):
        levels, means, stds = zip(*noise_curve(summary[model_name(base, variant)]))
        # Shift each variant slightly along x so that overlapping error bars stay readable.
        shift = (i - (len(variants) - 1) / 2) * 0.008 * (max(levels) - min(levels) or 1.0)
        axes.errorbar([x + shift for x in levels], means, yerr=stds, marker="o", capsize=3,
                      label=display_name(base, variant))
    axes.set_xlabel("noise level (× feature std)")
    axes.set_ylabel(f"test {short_metric(CURVE_METRIC)}")
    axes.set_title(f"{base} on {dataset}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(path, format="png", dpi=120, metadata={"Software": None})


def table_settings(params: Mapping) -> tuple[list[str], list[str], list[str], list[int]]:
    """(datasets, bases, variants, seeds) of params.yaml `table`, checked."""
    table = section(params, "table")
    values = []
    for key in ("datasets", "bases", "variants", "seeds"):
        value = section(table, key, "params.yaml: table")
        if not isinstance(value, list) or not value:
            raise ConfigError(f"params.yaml: table.{key}: expected a non-empty list")
        values.append(value)
    datasets, bases, variants, seeds = values
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ConfigError(f"params.yaml: table.seeds: expected integers, got {seeds}")
    return [str(d) for d in datasets], [str(b) for b in bases], [str(v or "") for v in variants], seeds


def build_report(root: Path, datasets: list[str], bases: list[str], variants: list[str], seeds: list[int]) -> dict:
    """Read every run, write summary.json, summary.md, figures and plot CSVs under `root`; return the summary."""
    models = [model_name(b, v) for b in bases for v in variants]
    summaries = {
        dataset: summarise_dataset(
            collect(root, dataset, models, seeds, "table"), collect(root, dataset, models, seeds, "robustness"),
            bases, variants,
        )
        for dataset in datasets
    }
    figures: dict[str, dict[str, str]] = {}
    with staged_directory(root / "figures") as figure_dir, staged_directory(root / "plots") as plot_dir:
        for dataset, summary in summaries.items():
            for base in bases:
                stem = f"robustness_{dataset}_{base}"
                save_curve_figure(figure_dir / f"{stem}.png", summary, dataset, base, variants)
                (plot_dir / f"{stem}.csv").write_text(curves_csv(summary, base, variants))
                figures.setdefault(dataset, {})[base] = f"figures/{stem}.png"
    selections = {dataset: {m: selection_summary(read_record(root / "tune" / dataset / f"{m}.json")) for m in models}
                  for dataset in datasets}
    for dataset, by_model in selections.items():
        for model, selection in by_model.items():
            summaries[dataset][model]["selection"] = selection
    write_json(root / "summary.json", summaries)
    write_text(root / "summary.md",
               markdown_report(summaries, bases, variants, seeds, figures) + "\n" + selection_section(selections))
    return summaries


def main() -> int:
    setup_logging()
    try:
        datasets, bases, variants, seeds = table_settings(read_params())
        build_report(METRICS_DIR, datasets, bases, variants, seeds)
    except (ConfigError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 1
    print((METRICS_DIR / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
