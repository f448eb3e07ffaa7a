"""report.md: the comparison of M0 against every M1 run, in words, tables and linked figures."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from clipfood_assets.reporting.analysis import (
    H1_NOT_COMPARED,
    H1_SUPPORTED,
    FailureAnalysis,
    Findings,
    H1Verdict,
    MetricComparison,
    differing_test_set_counts,
    metric_comparison,
)
from clipfood_assets.reporting.artifacts import (
    ALL_METRICS,
    BASELINE_LABEL,
    DIRECTION_LABELS,
    DIRECTIONS,
    HYPERPARAMETERS,
    as_number,
    config_value,
    lookup,
    metric_interval,
    metric_label,
    metric_value,
)

FIGURES = {
    "metric_bars.png": "Retrieval metrics of M0 and each run with 95 % confidence intervals",
    "metric_differences.png": "M1 − M0 per metric with paired-bootstrap 95 % confidence intervals",
    "learning_curves.png": "Training loss and temperature per step, validation R@1 per epoch",
    "efficiency.png": "Efficiency: training time, peak memory, throughput, trainable parameters",
    "retrieval_examples.png": "Retrieval examples, M0 vs the selected run",
    "sweep_validation.png": "Best validation text→image R@1 of every sweep point",
}
MAX_EPOCH_ROWS = 50
DASH = "–"

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~$])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def md_text(value: Any, limit: int = 80) -> str:
    """`value` as inline markdown text that cannot break a table or inject markup or HTML."""
    text = re.sub(r"\s+", " ", _CONTROL.sub(" ", str(value))).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell: integers with separators, other numbers with `digits` decimals."""
    number = as_number(value)
    if number is None:
        return DASH
    if number.is_integer() and abs(number) >= 1000:
        return f"{int(number):,}"
    return f"{number:.{digits}f}"


def fmt_bound(value: float) -> str:
    """A CI bound with 3 decimals, more when 3 would print a non-zero bound as 0.000."""
    return f"{value:.3f}" if value == 0 or abs(value) >= 0.0005 else f"{value:.2g}"


def fmt_interval(interval: Sequence[float] | None) -> str:
    return f"[{fmt_bound(interval[0])}, {fmt_bound(interval[1])}]" if interval is not None else ""


def fmt_signed(value: float | None) -> str:
    return f"{value:+.3f}" if value is not None else DASH


def fmt_setting(value: Any) -> str:
    """A hyper-parameter value: numbers compactly (5e-05), anything else as escaped text."""
    if value is None:
        return DASH
    number = as_number(value)
    return f"{number:g}" if number is not None else md_text(value, 40)


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table (cells must already be escaped)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _with_interval(value: float | None, interval: tuple[float, float] | None) -> str:
    if value is None:
        return DASH
    return f"{fmt(value)} {fmt_interval(interval)}".strip()


def _difference_cell(entry: MetricComparison | None) -> str:
    if entry is None or entry.diff is None:
        return DASH
    return f"{fmt_signed(entry.diff)} {fmt_interval(entry.ci)}".strip()


def verdict_sentence(key: str, verdict: H1Verdict) -> str:
    """One line per run: supported / not supported, quoting the CI of the primary difference."""
    name = f"Run {md_text(key, 60)}"
    label = metric_label(verdict.direction, verdict.metric)
    if verdict.status == H1_NOT_COMPARED:
        return f"- {name}: **not compared**: its results have no comparison_to_baseline, so H1 is not judged."
    primary = verdict.primary
    if primary is None or primary.ci is None:
        sentence = (f"- {name}: **H1 not supported**: no 95 % CI of the {label} difference was reported, "
                    "so there is no evidence for H1.")
    else:
        lo, hi = primary.ci
        head = "**H1 supported**" if verdict.status == H1_SUPPORTED else "**H1 not supported**"
        why = "" if verdict.status == H1_SUPPORTED else (" — it includes 0" if hi >= 0 else " — it lies below 0")
        sentence = (f"- {name}: {head}: the 95 % CI of the {label} difference is {fmt_interval((lo, hi))}{why} "
                    f"(M1 − M0 = {fmt_signed(primary.diff)}; M0 {fmt(primary.m0)}, M1 {fmt(primary.m1)}).")
    if verdict.upstream_flag is not None and verdict.upstream_flag != verdict.supported:
        sentence += (f" The evaluation step wrote h1_supported = {str(verdict.upstream_flag).lower()}; "
                     "this report follows the CI.")
    return sentence


def _verdict_section(findings: Findings) -> list[str]:
    lines = ["## Hypothesis H1", ""]
    lines.append("H1: fine-tuning CLIP with LoRA on food recipes improves text↔image alignment over the "
                 "baseline CLIP (M0). The decision rests on the 95 % paired-bootstrap confidence interval of "
                 "the M1 − M0 difference in text→image R@1, never on the point estimate: "
                 "H1 is supported only if the interval's lower bound is above 0.")
    lines.append("")
    if not findings.runs:
        return lines + ["No M1 runs yet: this report shows the M0 baseline alone.", ""]
    lines += [verdict_sentence(key, verdict) for key, verdict in findings.verdicts.items()]
    compared = [v for v in findings.verdicts.values() if v.status != H1_NOT_COMPARED]
    supported = [v for v in compared if v.status == H1_SUPPORTED]
    lines += ["", f"Each run on its own: H1 is supported by {len(supported)} of {len(compared)} compared run(s) "
                  f"({len(findings.runs)} run(s) in total)."]
    return lines + [""] + _selection_lines(findings)


def _selection_lines(findings: Findings) -> list[str]:
    """Selection on validation, claim on test for the selected run; the family-wise view over all runs."""
    selection = findings.selection
    if selection.run is None:
        return []
    name = md_text(selection.run, 60)
    verdict = findings.verdicts.get(selection.run)
    claim = ("supports H1" if verdict is not None and verdict.supported else "does not support H1")
    if selection.basis == "validation":
        r1, _ = selection.validation_score
        lines = [f"**Selected run: {name}**, chosen on the validation set (text→image R@1 {fmt(r1)} at epoch "
                 f"{selection.epoch}), never on the test set. On the test set it {claim}; the other runs are "
                 "exploratory."]
    else:
        lines = [f"**Selected run: {name}**, chosen on the test set because no run has validation results: "
                 f"its test interval is optimistic once there is more than one run. On the test set it {claim}."]
    if len(findings.holm) > 1:
        supported = [k for k, p in findings.holm.items() if p < 0.05]
        lines.append(f"Judged over all {len(findings.holm)} compared runs at once, Holm–Bonferroni on the one-sided "
                     f"paired-bootstrap p-values (family-wise α = 0.05) supports H1 for "
                     f"{', '.join(md_text(k, 40) for k in sorted(supported)) or 'no run'}.")
    return lines + [""]


def _test_set_section(findings: Findings) -> list[str]:
    lines = ["## Test set", ""]
    models = [(BASELINE_LABEL, findings.baseline)] + [(k, r.results) for k, r in findings.runs.items()]
    lines += table(["Model", "Pairs", "Recipes", "Images"],
                   [[md_text(label, 60)] + [fmt(results.get(n), 0) for n in ("n_pairs", "n_recipes", "n_images")]
                    for label, results in models])
    for key, run in findings.runs.items():
        differing = differing_test_set_counts(findings.baseline, run.results)
        if differing:
            lines += [f"Warning: run {md_text(key, 60)} was evaluated on a different test set than M0 "
                      f"({', '.join(differing)} differ); its comparison is not like for like.", ""]
    return lines


def _metrics_section(findings: Findings) -> list[str]:
    lines = ["## Retrieval metrics (95 % CI)", ""]
    models = [(BASELINE_LABEL, findings.baseline)] + [(f"M1 {k}", r.results) for k, r in findings.runs.items()]
    for direction in DIRECTIONS:
        lines += [f"### {DIRECTION_LABELS[direction]}", ""]
        lines += table(
            ["Model"] + list(ALL_METRICS),
            [[md_text(label, 60)] + [_with_interval(metric_value(results, direction, m),
                                                    metric_interval(results, direction, m)) for m in ALL_METRICS]
             for label, results in models],
        )
    lines += ["MedianRank and MeanRank: lower is better.", "", f"![{FIGURES['metric_bars.png']}](metric_bars.png)", ""]
    return lines


def _differences_section(findings: Findings) -> list[str]:
    lines = ["## M1 − M0 differences (paired-bootstrap 95 % CI)", ""]
    if not findings.runs:
        return lines + ["No M1 runs yet.", ""]
    for direction in DIRECTIONS:
        lines += [f"### {DIRECTION_LABELS[direction]}", ""]
        rows = []
        for key, run in findings.runs.items():
            comparison = lookup(run.results, "comparison_to_baseline")
            if findings.verdicts[key].status == H1_NOT_COMPARED:
                rows.append([md_text(key, 60)] + ["not compared"] * len(ALL_METRICS))
            else:
                rows.append([md_text(key, 60)] + [_difference_cell(metric_comparison(comparison, direction, m))
                                                  for m in ALL_METRICS])
        lines += table(["Run"] + list(ALL_METRICS), rows)
    lines += ["A difference is evidence of a change only when its interval excludes 0 "
              "(for MedianRank and MeanRank a negative difference is an improvement).", "",
              f"![{FIGURES['metric_differences.png']}](metric_differences.png)", ""]
    return lines


def _hyperparameter_section(findings: Findings) -> list[str]:
    if not findings.runs:
        return []
    lines = ["## Run configurations", ""]
    lines += table(["Run"] + list(HYPERPARAMETERS),
                   [[md_text(key, 60)] + [fmt_setting(config_value(run.config, name)) for name in HYPERPARAMETERS]
                    for key, run in findings.runs.items()])
    return lines


def _training_section(findings: Findings) -> list[str]:
    lines = ["## Training", "", f"![{FIGURES['learning_curves.png']}](learning_curves.png)", ""]
    if not findings.runs:
        return lines + ["No M1 runs yet.", ""]
    summary_rows, epoch_rows = [], []
    for key, run in findings.runs.items():
        logs = run.training_logs if isinstance(run.training_logs, Mapping) else {}
        epochs = [e for e in logs.get("epochs", []) if isinstance(e, Mapping)] if isinstance(
            logs.get("epochs"), list) else []
        summary_rows.append([
            md_text(key, 60),
            str(len(epochs)) if logs else "no training logs",
            fmt(epochs[-1].get("avg_loss"), 4) if epochs else DASH,
            fmt(logs.get("total_time_s"), 1),
            fmt(logs.get("negatives_per_pair"), 0),
            fmt(logs.get("effective_batch_size"), 0),
        ])
        epoch_rows += [[md_text(key, 60), fmt(e.get("epoch"), 0), fmt(e.get("avg_loss"), 4), fmt(e.get("time_s"), 1)]
                       for e in epochs[:MAX_EPOCH_ROWS]]
    lines += table(["Run", "Epochs", "Last epoch avg loss", "Total time (s)", "Negatives per pair",
                    "Effective batch"], summary_rows)
    if epoch_rows:
        lines += table(["Run", "Epoch", "Avg loss", "Time (s)"], epoch_rows)
    return lines


def _sweep_section(findings: Findings, sweeps: Mapping[str, Sequence[tuple[str, Mapping[str, Any]]]]) -> list[str]:
    lines = ["## Sweeps", "", "Each point is one run; the selection uses only its best validation text→image R@1 "
             "(test R@1 shown for reading, not for choosing).", ""]
    for name, points in sweeps.items():
        keys = list(dict.fromkeys(k for _, values in points for k in values))
        rows = []
        for run_key, values in points:
            run = findings.runs.get(run_key)
            score = lookup(run.training_logs, "best_validation", "score") if run else None
            validation = score[0] if isinstance(score, list) and score else None
            test = metric_value(run.results, "text_to_image", "R@1") if run else None
            role = "selected" if run_key == findings.best_run else ("not run yet" if run is None else "exploratory")
            rows.append([md_text(run_key, 60)] + [md_text(values.get(k, DASH), 20) for k in keys]
                        + [fmt(validation), fmt(test), role])
        lines += [f"### {md_text(name, 60)}", ""]
        lines += table(["Run"] + [md_text(k, 40) for k in keys] + ["Validation t2i R@1", "Test t2i R@1", "Role"],
                       rows)
    return lines + [f"![{FIGURES['sweep_validation.png']}](sweep_validation.png)", ""]


def _efficiency_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["## Efficiency", ""]
    lines += table(
        ["Model", "PEFT method", "Device", "Training time (s)", "Peak memory (MiB)", "Memory kind", "Images/s",
         "Texts/s", "Trainable params", "Total params", "Trainable %"],
        [[md_text(row["model"], 60), md_text(row["method"] or DASH, 20), md_text(row["device"] or DASH, 30),
          fmt(row["training_time_s"], 1),
          fmt(None if row["peak_memory_bytes"] is None else row["peak_memory_bytes"] / 2**20, 1),
          md_text(row["peak_memory_kind"] or DASH, 30), fmt(row["images_per_s"], 1), fmt(row["texts_per_s"], 1),
          fmt(row["trainable_parameters"], 0), fmt(row["total_parameters"], 0), fmt(row["trainable_percent"], 2)]
         for row in rows],
    )
    kinds = {row["peak_memory_kind"] for row in rows if row["peak_memory_kind"]}
    if len(kinds) > 1:
        lines += ["Peak memory was measured in different ways across models; those figures are not comparable.", ""]
    return lines + [f"![{FIGURES['efficiency.png']}](efficiency.png)", ""]


def _examples_section(findings: Findings, missing_thumbnails: Sequence[str]) -> list[str]:
    lines = ["## Retrieval examples", ""]
    if findings.best_run is not None:
        lines.append(f"M0 and the best run ({md_text(findings.best_run, 60)}) on the same queries; "
                     "green marks a result from the query's recipe, red one from another recipe.")
    else:
        lines.append("M0 alone (no M1 run to compare); green marks a result from the query's recipe, red one "
                     "from another recipe.")
    if missing_thumbnails:
        lines.append(f"{len(missing_thumbnails)} thumbnail(s) could not be loaded and are drawn as grey tiles.")
    return lines + ["", f"![{FIGURES['retrieval_examples.png']}](retrieval_examples.png)", ""]


def _failure_lines(analysis: FailureAnalysis, max_rows: int) -> list[str]:
    label = DIRECTION_LABELS[analysis.direction]
    if not analysis.analysed:
        return [f"- {label}: failure analysis {md_text(analysis.note, 160)}.", ""]
    lines = [f"- {label}: {len(analysis.worse)} of {analysis.n_queries} queries ranked worse than M0 "
             f"({analysis.n_better} better, {analysis.n_same} unchanged).", ""]
    if analysis.worse:
        shown = analysis.worse[:max_rows]
        lines += table(["Query", "M0 first-hit rank", "M1 first-hit rank", "Change"],
                       [[md_text(c.query, 80), str(c.m0_rank), str(c.m1_rank), f"+{c.change}"] for c in shown])
        if len(analysis.worse) > len(shown):
            lines += [f"… and {len(analysis.worse) - len(shown)} more in failure_cases.csv.", ""]
    return lines


def _failures_section(findings: Findings, max_rows: int) -> list[str]:
    lines = ["## Failure cases", ""]
    if not findings.runs:
        return lines + ["No M1 runs yet.", ""]
    lines += ["Queries whose first relevant result a run ranks lower than M0 did, from the first-hit ranks "
              "aligned by query; worst first. The full list is in failure_cases.csv.", ""]
    for key in findings.runs:
        lines += [f"### Run {md_text(key, 60)}", ""]
        for direction in DIRECTIONS:
            lines += _failure_lines(findings.failures[key][direction], max_rows)
    return lines


def render_markdown(
    findings: Findings,
    efficiency: Sequence[Mapping[str, Any]],
    missing_thumbnails: Sequence[str],
    max_failure_rows: int,
    sweeps: Mapping[str, Sequence[tuple[str, Mapping[str, Any]]]] | None = None,
) -> str:
    """The whole report.md."""
    lines = ["# CLIP fine-tuning report: M0 (baseline) vs M1 (LoRA) runs", ""]
    lines += _verdict_section(findings)
    lines += _test_set_section(findings)
    lines += _metrics_section(findings)
    lines += _differences_section(findings)
    lines += _hyperparameter_section(findings)
    if sweeps:
        lines += _sweep_section(findings, sweeps)
    lines += _training_section(findings)
    lines += _efficiency_section(efficiency)
    lines += _examples_section(findings, missing_thumbnails)
    lines += _failures_section(findings, max_failure_rows)
    return "\n".join(lines).rstrip() + "\n"
