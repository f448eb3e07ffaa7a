"""Build the comparison report of M0 (baseline CLIP) against every M1 (LoRA) run.

The entry point is `build_comparison_report`; it reads nothing and writes nothing itself: the
caller passes the parsed JSON/YAML artifacts and an image loader, and stores `Report.files`
(e.g. under experiments/report/ in the fine-tuning zone).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from clipfood_assets.reporting.analysis import Findings, analyse, build_summary
from clipfood_assets.reporting.artifacts import Report, RunArtifacts
from clipfood_assets.reporting.examples_figure import retrieval_examples_png
from clipfood_assets.reporting.figures import (
    efficiency_png,
    efficiency_rows,
    learning_curves_png,
    metric_bars_png,
    metric_differences_png,
    sweep_png,
)
from clipfood_assets.reporting.markdown import render_markdown
from clipfood_assets.reporting.plotting import run_colors

logger = logging.getLogger(__name__)

REPORT_FILES = (
    "report.md",
    "summary.json",
    "failure_cases.csv",
    "metric_bars.png",
    "metric_differences.png",
    "learning_curves.png",
    "efficiency.png",
    "retrieval_examples.png",
)


def failure_cases_csv(findings: Findings) -> bytes:
    """Every query a run ranked worse than M0: run, direction, query, both first-hit ranks, change."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", "direction", "query", "m0_rank", "m1_rank", "rank_change"])
    for key, per_direction in findings.failures.items():
        for direction, analysis in per_direction.items():
            for change in analysis.worse:
                writer.writerow([key, direction, change.query, change.m0_rank, change.m1_rank, change.change])
    return buffer.getvalue().encode("utf-8")


def _validate(baseline: Any, runs: Any) -> dict[str, RunArtifacts]:
    if not isinstance(baseline, Mapping) or not isinstance(baseline.get("metrics"), Mapping):
        raise ValueError("baseline results must be a mapping with a 'metrics' mapping (results_baseline.json)")
    if not isinstance(runs, Mapping):
        raise TypeError(f"runs must map run keys to RunArtifacts, got {type(runs).__name__}")
    checked = {}
    for key, run in runs.items():
        if not isinstance(run, RunArtifacts) or not isinstance(run.results, Mapping):
            raise TypeError(f"run {key!r} must be RunArtifacts with a results mapping")
        if str(key) in checked:
            raise ValueError(f"run key {key!r} appears twice once turned into text")
        checked[str(key)] = run
    return checked


def build_comparison_report(
    baseline: Mapping[str, Any],
    baseline_examples: Sequence[Mapping[str, Any]] | None,
    runs: Mapping[str, RunArtifacts],
    load_image: Callable[[str], bytes] | None,
    *,
    example_queries_per_direction: int = 3,
    max_failure_rows: int = 15,
    sweeps: Mapping[str, Sequence[tuple[str, Mapping[str, Any]]]] | None = None,
) -> Report:
    """Compare M0 with every M1 run: figures (PNG), report.md, summary.json and failure_cases.csv.

    H1 is judged per run from the 95 % paired-bootstrap CI of the text→image R@1 difference in
    the run's comparison_to_baseline (supported only if its lower bound is > 0). Runs without a
    comparison are shown and marked "not compared". `load_image` maps an image key to JPEG bytes
    for thumbnails; None, or a loader that raises, gives grey placeholder tiles. Same inputs give
    the same bytes. ``sweeps`` (name -> [(run key, {config key: value})]) adds a sweep table and
    ``sweep_validation.png`` (validation R@1 per setting).
    """
    checked = _validate(baseline, runs)
    findings = analyse(baseline, checked)
    colors = run_colors(list(findings.runs))
    best = findings.best_run
    examples_png, missing = retrieval_examples_png(
        baseline_examples,
        (best, findings.runs[best].examples) if best is not None else None,
        load_image,
        queries_per_direction=example_queries_per_direction,
    )
    efficiency = efficiency_rows(baseline, findings.runs)
    summary = build_summary(findings)
    summary["thumbnails_missing"] = len(missing)
    sweeps = {name: list(points) for name, points in (sweeps or {}).items() if points}
    markdown = render_markdown(findings, efficiency, missing, max_failure_rows, sweeps)
    files = {
        "report.md": markdown.encode("utf-8"),
        "summary.json": (json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
                         + "\n").encode("utf-8"),
        "failure_cases.csv": failure_cases_csv(findings),
        "metric_bars.png": metric_bars_png(baseline, findings.runs, colors),
        "metric_differences.png": metric_differences_png(findings.runs, colors),
        "learning_curves.png": learning_curves_png(findings.runs, colors),
        "efficiency.png": efficiency_png(baseline, findings.runs, colors),
        "retrieval_examples.png": examples_png,
    }
    if sweeps:
        files["sweep_validation.png"] = sweep_png(sweeps, findings.runs, findings.best_run)
    logger.info("comparison report built: %d run(s), best %s, %d supporting H1",
                summary["n_runs"], best, summary["n_supported"])
    return Report(files=files, summary=summary, markdown=markdown)
