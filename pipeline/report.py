"""The paper-style summary of the full table: seed statistics, changes against the base, Markdown.

Pure functions over already-loaded metrics records (the stage `pipeline.stages.report` does the
reading and writing). Conventions:
- mean and sample standard deviation (ddof 1; 0 with one seed) over the seeds of `table.seeds`;
- relative change of a DVIB variant = 100·(mean_variant / mean_base − 1) %;
- a change "exceeds the seed spread" when, with d_s = variant_s − base_s the paired per-seed
  difference (the same seed trains both), |mean(d)| > std(d) (ddof 1). That is the spread of the
  difference itself, not a significance test: with 3 seeds it is a t-statistic above √3. With one
  seed there is no spread and nothing is marked.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from pipeline.seed_stats import as_number, mean_std

TABLE_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "recall@5", "precision@5", "map@5", "ndcg@5")
ROBUSTNESS_METRICS = ("recall@20", "ndcg@20")
CURVE_METRIC = "recall@20"
SHORT = {"recall": "R", "ndcg": "N", "precision": "P", "map": "MAP"}
BEYOND_SPREAD_MARK = "†"
NO_FEATURES_MARK = "‡"
NO_FEATURES_NOTE = "‡ scores do not read the item features at test time"


def model_name(base: str, variant: str) -> str:
    """Registry name of a base model with a DVIB variant suffix ('' = plain base)."""
    return f"{base}{variant}"


def display_name(base: str, variant: str) -> str:
    """How a row is labelled in the tables: 'VBPR', 'VBPR +DVIBc'."""
    return f"{base} +DVIB{variant}" if variant else base


def compare(base: Sequence[float], variant: Sequence[float]) -> dict:
    """Relative change of the means (%) and whether the paired difference exceeds its seed spread."""
    base_mean, _ = mean_std(base)
    variant_mean, _ = mean_std(variant)
    diff_mean, diff_std = mean_std([v - b for b, v in zip(base, variant, strict=True)])
    return {
        "relative_change_pct": 100.0 * (variant_mean / base_mean - 1.0) if base_mean else None,
        "difference": diff_mean,
        "difference_std": diff_std,
        "beyond_seed_spread": abs(diff_mean) > diff_std if len(base) > 1 else None,
    }


def summarise_model(runs: Sequence[Mapping], robustness: Sequence[Mapping]) -> dict:
    """Seed statistics of one model: table metrics, run status, robustness conditions (same seed order)."""
    metrics = [m for m in TABLE_METRICS if m in runs[0]["test"]]  # the per-seed files keep every metric
    stats = {m: mean_std([r["test"][m] for r in runs]) for m in metrics}
    conditions = list(robustness[0]["conditions"])
    robust = {
        metric: {c: mean_std([r["conditions"][c][metric] for r in robustness]) for c in conditions}
        for metric in ROBUSTNESS_METRICS
    }
    return {
        "n_seeds": len(runs),
        "status": ",".join(sorted({r["status"] for r in runs})),
        "best_epoch": as_number(mean_std([float(r["best_epoch"]) for r in runs])[0]),
        "random_recall@20": runs[0]["random_recall@20"],
        "test": {m: s[0] for m, s in stats.items()},
        "test_std": {m: s[1] for m, s in stats.items()},
        "robustness": {
            metric: {c: s[0] for c, s in by_condition.items()} for metric, by_condition in robust.items()
        },
        "robustness_std": {
            metric: {c: s[1] for c, s in by_condition.items()} for metric, by_condition in robust.items()
        },
        "scores_respond_to_features": all(r["scores_respond_to_features"] for r in robustness),
        "clean_matches_checkpoint": all(r["clean_matches_checkpoint"] for r in robustness),
    }


def summarise_dataset(
    runs: Mapping[str, Sequence[Mapping]], robustness: Mapping[str, Sequence[Mapping]], bases: Sequence[str],
    variants: Sequence[str],
) -> dict:
    """{model: summary} for one dataset, each variant also compared with its base seed by seed."""
    out = {}
    for base in bases:
        for variant in variants:
            name = model_name(base, variant)
            summary = summarise_model(runs[name], robustness[name])
            if variant and base in runs:
                comparisons = {
                    m: compare([r["test"][m] for r in runs[base]], [r["test"][m] for r in runs[name]])
                    for m in summary["test"]
                }
                for key in ("relative_change_pct", "beyond_seed_spread"):
                    summary[key] = {m: c[key] for m, c in comparisons.items()}
            out[name] = summary
    return out


def noise_curve(summary: Mapping) -> list[tuple[float, float, float]]:
    """(noise level, mean, std) of the curve metric over the noise conditions, by increasing level."""
    means, stds = summary["robustness"][CURVE_METRIC], summary["robustness_std"][CURVE_METRIC]
    points = [(float(c.split("@", 1)[1]), means[c], stds[c]) for c in means if c.startswith("noise@")]
    return sorted(points)


def variant_label(variant: str) -> str:
    """The legend and plot-data label of a variant: 'base', 'DVIBc', 'DVIBa' (the same for every base)."""
    return f"DVIB{variant}" if variant else "base"


def short_metric(metric: str) -> str:
    """'recall@20' -> 'R@20'."""
    name, _, k = metric.partition("@")
    return f"{SHORT.get(name, name)}@{k}"


def condition_label(condition: str) -> str:
    """'noise@0.25' -> 'noise 0.25σ', 'remove@image' -> 'no image', 'drop@0.5' -> 'drop 50%', 'noise@0' -> 'clean'."""
    kind, _, arg = condition.partition("@")
    if kind == "noise":
        return "clean" if float(arg) == 0 else f"noise {arg}σ"
    if kind == "remove":
        return f"no {arg}"
    if kind == "drop":
        return f"drop {100 * float(arg):g}%"
    return condition


def _cell(mean: float, std: float, n_seeds: int) -> str:
    return f"{mean:.4f} ± {std:.4f}" if n_seeds > 1 else f"{mean:.4f}"


def metrics_table(summary: Mapping[str, Mapping], bases: Sequence[str], variants: Sequence[str]) -> list[str]:
    """Markdown lines: one row per model, the table metrics, variants with their change against the base."""
    header = ["Model", *(short_metric(m) for m in TABLE_METRICS), "best epoch", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for base in bases:
        for variant in variants:
            s = summary[model_name(base, variant)]
            cells = []
            for m in TABLE_METRICS:
                cell = _cell(s["test"][m], s["test_std"][m], s["n_seeds"])
                change = s.get("relative_change_pct", {}).get(m)
                if change is not None:
                    mark = BEYOND_SPREAD_MARK if s["beyond_seed_spread"][m] else ""
                    cell += f" ({change:+.1f}%{mark})"
                cells.append(cell)
            lines.append("| " + " | ".join([display_name(base, variant), *cells, f"{s['best_epoch']:.1f}",
                                             s["status"]]) + " |")
    return lines


def robustness_table(summary: Mapping[str, Mapping], bases: Sequence[str], variants: Sequence[str]) -> list[str]:
    """Markdown lines: the curve metric of every model under every test-time condition."""
    first = summary[model_name(bases[0], variants[0])]
    conditions = list(first["robustness"][CURVE_METRIC])
    header = ["Model", *(condition_label(c) for c in conditions)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for base in bases:
        for variant in variants:
            s = summary[model_name(base, variant)]
            label = display_name(base, variant) + ("" if s["scores_respond_to_features"] else f" {NO_FEATURES_MARK}")
            means, stds = s["robustness"][CURVE_METRIC], s["robustness_std"][CURVE_METRIC]
            lines.append("| " + " | ".join([label, *(_cell(means[c], stds[c], s["n_seeds"]) for c in conditions)])
                         + " |")
    return lines


def markdown_report(
    summaries: Mapping[str, Mapping], bases: Sequence[str], variants: Sequence[str], seeds: Sequence[int],
    figures: Mapping[str, Mapping[str, str]],
) -> str:
    """The whole summary.md: per dataset, the metrics table, the robustness table and its figures."""
    spread = (
        f"mean ± sample std over seeds {', '.join(map(str, seeds))}; {BEYOND_SPREAD_MARK}: the paired per-seed "
        "difference from the base exceeds its own standard deviation (|mean d| > std d)"
        if len(seeds) > 1 else f"one seed ({seeds[0]}): no spread estimate, no change is marked"
    )
    lines = [
        "# DVIB: test metrics and robustness",
        "",
        f"Test metrics at the best-validation epoch ({spread}). In brackets: relative change of the mean "
        "against the base model.",
        "",
    ]
    for dataset, summary in summaries.items():
        random = next(iter(summary.values()))["random_recall@20"]
        lines += [f"## {dataset}", "", *metrics_table(summary, bases, variants), "",
                  f"Random ranking, expected test Recall@20: {random:.4f}", "",
                  f"### {dataset}: test {short_metric(CURVE_METRIC)} under test-time feature perturbations", "",
                  "Noise is Gaussian, scaled to each modality's feature standard deviation σ; 'no <modality>' "
                  "replaces every item's features by the modality's mean vector; 'drop' zeroes that share of "
                  "each modality's dimensions.", "",
                  *robustness_table(summary, bases, variants), ""]
        if any(not s["scores_respond_to_features"] for s in summary.values()):
            lines += [f"{NO_FEATURES_MARK}: the model's test-time scores do not read the stored item features "
                      "(they enter only through training losses, or frozen graphs built before training), so "
                      "test-time perturbations cannot change them.", ""]
        if any(not s["clean_matches_checkpoint"] for s in summary.values()):
            bad = [m for m, s in summary.items() if not s["clean_matches_checkpoint"]]
            lines += [f"Warning: re-evaluating {', '.join(bad)} without perturbation did not reproduce the "
                      "checkpoint's test metrics exactly (see metrics/robustness).", ""]
        for base, path in figures.get(dataset, {}).items():
            lines += [f"![{base} on {dataset}: {short_metric(CURVE_METRIC)} against noise level]({path})", ""]
    return "\n".join(lines)


# --- trained on corrupted features ----------------------------------------------------------------
# A clean dataset of the table and the derived datasets of it that the table also holds form one
# group: level 0 is the clean dataset, levels 1, 2, ... its derived datasets in `table.datasets` order.

CORRUPTION_METRICS = ("recall@20", "ndcg@20")


def corruption_groups(datasets: Sequence[str], lineage: Mapping[str, tuple[str, str]]) -> dict[str, list[str]]:
    """{clean dataset: [its derived datasets, in table order]} for every clean dataset of the table with any.

    `lineage` maps a derived dataset to (the non-derived dataset it comes from, its corruption).
    """
    groups: dict[str, list[str]] = {}
    for name in datasets:
        if name in lineage and lineage[name][0] in datasets:
            groups.setdefault(lineage[name][0], []).append(name)
    return groups


def corruption_curve(summaries: Mapping[str, Mapping], levels: Sequence[str], model: str,
                     metric: str) -> list[tuple[int, float, float]]:
    """(level, mean, std over seeds) of `model`'s test `metric` on each dataset of `levels` (clean first)."""
    return [
        (level, summaries[dataset][model]["test"][metric], summaries[dataset][model]["test_std"][metric])
        for level, dataset in enumerate(levels)
    ]


def corruption_table(summaries: Mapping[str, Mapping], levels: Sequence[str], bases: Sequence[str],
                     variants: Sequence[str], metric: str) -> list[str]:
    """Markdown lines: a row per model, a column per corruption level; in brackets the change against clean."""
    header = ["Model", *(f"{d} (level {i})" if i else f"{d} (clean)" for i, d in enumerate(levels))]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for base in bases:
        for variant in variants:
            name = model_name(base, variant)
            curve = corruption_curve(summaries, levels, name, metric)
            n_seeds = summaries[levels[0]][name]["n_seeds"]
            clean = curve[0][1]
            cells = []
            for level, mean, std in curve:
                cell = _cell(mean, std, n_seeds)
                if level and clean:
                    cell += f" ({100.0 * (mean / clean - 1.0):+.1f}%)"
                cells.append(cell)
            lines.append("| " + " | ".join([display_name(base, variant), *cells]) + " |")
    return lines


def corruption_markdown(summaries: Mapping[str, Mapping], lineage: Mapping[str, tuple[str, str]],
                        bases: Sequence[str], variants: Sequence[str], figures: Mapping[str, Mapping[str, str]]) -> str:
    """The 'trained on corrupted features' section of summary.md ('' when the table has no such group)."""
    groups = corruption_groups(list(summaries), lineage)
    if not groups:
        return ""
    lines = [
        "## Trained on corrupted features", "",
        "Each model trained and tested on a clean dataset (level 0) and on datasets derived from it whose "
        "training features were corrupted (`source: derived` in params.yaml; interactions and splits "
        "unchanged). Test metrics at the best-validation epoch, mean ± std over seeds; in brackets the "
        "change of the mean against the same model on the clean dataset.", "",
    ]
    for clean, derived in groups.items():
        levels = [clean, *derived]
        lines += [f"### {clean}", ""]
        lines += [f"- level {i}: `{d}`: {lineage[d][1]}" for i, d in enumerate(derived, start=1)] + [""]
        for metric in CORRUPTION_METRICS:
            table = corruption_table(summaries, levels, bases, variants, metric)
            lines += [f"Test {short_metric(metric)}:", "", *table, ""]
        for base, path in figures.get(clean, {}).items():
            lines += [f"![{base} trained on corrupted {clean}: {short_metric(CURVE_METRIC)} against level]({path})", ""]
    return "\n".join(lines)


# --- selection on validation against selection on test -----------------------------------------------

SELECTION_METRICS = ("recall@20", "ndcg@20")
REFERENCE_SELECTION_LABEL = "reference protocol (selected on test)"


def selection_summary(tuning: Mapping, metric: str = CURVE_METRIC) -> dict:
    """One cell's tuning outcome: test metrics of our validation-selected trial, of the trial with the
    best test `metric` (the reference's protocol, shown only to expose selection bias), and the gap."""
    ok = [t for t in tuning["trials"] if t["status"] == "ok"]
    on_test = max(ok, key=lambda t: t["test"][metric])
    ours = tuning["best"]
    pick = lambda t: {"params": t["params"], "test": {m: t["test"][m] for m in SELECTION_METRICS}}  # noqa: E731
    return {
        "trials": len(tuning["trials"]),
        "failed": sum(t["status"] == "failed" for t in tuning["trials"]),
        "selected_on_valid": pick(ours),
        "selected_on_test": pick(on_test),
        "gap": {m: on_test["test"][m] - ours["test"][m] for m in SELECTION_METRICS},
    }


def selection_table(selections: Mapping[str, Mapping]) -> list[str]:
    """Markdown lines: per cell, the validation-selected and the test-selected trial's test metrics and the gap."""
    header = ["Model", "trials (failed)", *(f"{short_metric(m)} ours" for m in SELECTION_METRICS),
              *(f"{short_metric(m)} test-selected" for m in SELECTION_METRICS),
              *(f"{short_metric(m)} gap" for m in SELECTION_METRICS), "our point"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, s in selections.items():
        point = ", ".join(f"{k}={v}" for k, v in s["selected_on_valid"]["params"].items())
        lines.append("| " + " | ".join([
            model, f"{s['trials']} ({s['failed']})",
            *(f"{s['selected_on_valid']['test'][m]:.4f}" for m in SELECTION_METRICS),
            *(f"{s['selected_on_test']['test'][m]:.4f}" for m in SELECTION_METRICS),
            *(f"{s['gap'][m]:+.4f}" for m in SELECTION_METRICS), point]) + " |")
    return lines


def selection_section(selections: Mapping[str, Mapping[str, Mapping]]) -> str:
    """The Markdown section on grid selection: ours (validation) against the reference's (test), per dataset."""
    lines = ["## Selection: validation (ours) against test (reference)", "",
             "Each cell's grid winner is chosen on validation "
             f"{short_metric(CURVE_METRIC)}; the table trains at that point. The test-selected columns are the "
             f"{REFERENCE_SELECTION_LABEL}: the trial with the best test {short_metric(CURVE_METRIC)}, as the "
             "reference implementation picks it. They are shown only to expose how much of a published gain can "
             "be selection on the test set, and are used for nothing else. Gap = test-selected − ours (≥ 0).", ""]
    for dataset, by_model in selections.items():
        lines += [f"### {dataset}", "", *selection_table(by_model), ""]
    return "\n".join(lines)
