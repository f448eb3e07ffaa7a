"""What the report concludes: H1 per run from confidence intervals, the best run, failure cases.

Pure functions over the results dicts; no plotting, no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clipfood_assets.modeling.metrics import holm_adjusted
from clipfood_assets.reporting.artifacts import (
    DIRECTIONS,
    PRIMARY_METRIC,
    RunArtifacts,
    as_interval,
    as_number,
    as_rank,
    lookup,
    metric_value,
    parse_metric_path,
)

H1_SUPPORTED = "supported"
H1_NOT_SUPPORTED = "not supported"
H1_NOT_COMPARED = "not compared"


@dataclass(frozen=True)
class MetricComparison:
    """M1 - M0 for one metric with its paired-bootstrap 95 % CI, as given in comparison_to_baseline."""

    m0: float | None
    m1: float | None
    diff: float | None
    ci: tuple[float, float] | None


@dataclass(frozen=True)
class H1Verdict:
    """Whether one run supports H1, judged only by the CI of the primary-metric difference."""

    status: str  # one of H1_SUPPORTED, H1_NOT_SUPPORTED, H1_NOT_COMPARED
    direction: str
    metric: str
    primary: MetricComparison | None
    upstream_flag: bool | None  # h1_supported as written by the evaluation step
    reason: str

    @property
    def supported(self) -> bool | None:
        """True/False when compared, None when the run was not compared to M0."""
        return None if self.status == H1_NOT_COMPARED else self.status == H1_SUPPORTED


@dataclass(frozen=True)
class RankChange:
    """First-hit rank of one query under M0 and under a run."""

    direction: str
    query: str
    m0_rank: int
    m1_rank: int

    @property
    def change(self) -> int:
        """Positive when the run ranks the first relevant item lower (worse) than M0."""
        return self.m1_rank - self.m0_rank


@dataclass(frozen=True)
class FailureAnalysis:
    """Queries a run made worse than M0 in one direction; `note` says why it was skipped, if it was."""

    direction: str
    worse: tuple[RankChange, ...] = ()
    n_queries: int = 0
    n_better: int = 0
    n_same: int = 0
    note: str | None = None

    @property
    def analysed(self) -> bool:
        """False when the first-hit ranks could not be aligned with M0's."""
        return self.note is None


def metric_comparison(comparison: Any, direction: str, metric: str) -> MetricComparison | None:
    """One metric's entry of comparison_to_baseline, or None if it is absent."""
    entry = lookup(comparison, direction, metric)
    if not isinstance(entry, Mapping):
        return None
    m0, m1 = as_number(entry.get("m0")), as_number(entry.get("m1"))
    diff = as_number(entry.get("diff"))
    if diff is None and m0 is not None and m1 is not None:
        diff = m1 - m0
    return MetricComparison(m0=m0, m1=m1, diff=diff, ci=as_interval(entry.get("ci")))


def h1_verdict(results: Mapping[str, Any]) -> H1Verdict:
    """H1 for one run: supported only if the lower bound of the difference's 95 % CI is > 0.

    The point estimate never decides; a missing CI means "not supported" (no evidence). The
    primary metric is fixed (text→image R@1) whatever a run's comparison names, so no run can
    pick the metric that happens to favour it.
    """
    comparison = results.get("comparison_to_baseline") if isinstance(results, Mapping) else None
    direction, metric = parse_metric_path(PRIMARY_METRIC)
    if not isinstance(comparison, Mapping):
        return H1Verdict(H1_NOT_COMPARED, direction, metric, None, None, "no comparison_to_baseline")
    flag = comparison.get("h1_supported")
    upstream = flag if isinstance(flag, bool) else None
    primary = metric_comparison(comparison, direction, metric)
    if primary is None or primary.ci is None:
        return H1Verdict(H1_NOT_SUPPORTED, direction, metric, primary, upstream, "no 95 % CI for the difference")
    lo, _hi = primary.ci
    if lo > 0:
        return H1Verdict(H1_SUPPORTED, direction, metric, primary, upstream, "CI lower bound > 0")
    return H1Verdict(H1_NOT_SUPPORTED, direction, metric, primary, upstream, "CI includes or lies below 0")


FAMILY_ALPHA = 0.05


@dataclass(frozen=True)
class Selection:
    """The run the report stands behind, and on what it was chosen."""

    run: str | None
    basis: str  # "validation", or "test" when no run has validation (optimistic: chosen on the test set)
    validation_score: tuple[float, float] | None = None
    epoch: int | None = None


def _validation_best(run: RunArtifacts) -> tuple[tuple[float, float], int | None] | None:
    score = lookup(run.training_logs, "best_validation", "score")
    if not isinstance(score, list) or len(score) != 2 or any(as_number(v) is None for v in score):
        return None
    epoch = lookup(run.training_logs, "best_validation", "epoch")
    return (float(score[0]), float(score[1])), epoch if isinstance(epoch, int) else None


def select_run(runs: Mapping[str, RunArtifacts]) -> Selection:
    """Selection on validation, claims on test: the run with the best validation text→image R@1
    (then MRR, then key). Only when no run has validation is the test set used (and said)."""
    validated = {key: best for key, run in runs.items() if (best := _validation_best(run)) is not None}
    if validated:
        key = min(validated, key=lambda k: (-validated[k][0][0], -validated[k][0][1], k))
        return Selection(key, "validation", validated[key][0], validated[key][1])
    return Selection(choose_best_run(runs), "test")


def holm_over_runs(runs: Mapping[str, RunArtifacts]) -> dict[str, float]:
    """Holm-adjusted one-sided bootstrap p-values of the primary metric, over every compared run."""
    direction, metric = parse_metric_path(PRIMARY_METRIC)
    raw = {}
    for key, run in runs.items():
        p_value = as_number(lookup(run.results, "comparison_to_baseline", direction, metric, "p_value"))
        if p_value is not None:
            raw[key] = p_value
    return holm_adjusted(raw)


def choose_best_run(runs: Mapping[str, RunArtifacts]) -> str | None:
    """The run with the highest text→image R@1 (then MRR, then key); None if no run has the metric."""
    direction, metric = parse_metric_path(None)
    scored = []
    for key, run in runs.items():
        value = metric_value(run.results, direction, metric)
        if value is not None:
            tie_break = metric_value(run.results, direction, "MRR")
            scored.append((-value, -(tie_break if tie_break is not None else float("-inf")), key))
    return min(scored)[2] if scored else None


def _first_hit_ranks(results: Mapping[str, Any], direction: str) -> tuple[list[str], list[int]] | str:
    """(queries, ranks) of one direction, or a string saying why they are unusable."""
    block = lookup(results, "first_hit_ranks", direction)
    queries, ranks = lookup(block, "queries"), lookup(block, "ranks")
    if not isinstance(queries, list) or not isinstance(ranks, list):
        return "no first-hit ranks"
    if len(queries) != len(ranks):
        return f"{len(queries)} queries but {len(ranks)} ranks"
    parsed = [as_rank(rank) for rank in ranks]
    if any(rank is None for rank in parsed):
        return "ranks that are not positive integers"
    return [str(query) for query in queries], [int(rank) for rank in parsed if rank is not None]


def _align(baseline: tuple[list[str], list[int]], run: tuple[list[str], list[int]]) -> list[tuple[str, int, int]] | str:
    """Pairs (query, M0 rank, run rank), or a string saying why the queries do not align."""
    (q0, r0), (q1, r1) = baseline, run
    if q0 == q1:  # same order: positional alignment also copes with repeated queries
        return list(zip(q0, r0, r1, strict=True))
    if len(set(q0)) != len(q0) or len(set(q1)) != len(q1):
        return "queries repeat and come in a different order than M0's"
    only_m0, only_run = set(q0) - set(q1), set(q1) - set(q0)
    if only_m0 or only_run:
        return f"queries differ from M0's ({len(only_m0)} only in M0, {len(only_run)} only in the run)"
    run_rank = dict(zip(q1, r1, strict=True))
    return [(query, rank, run_rank[query]) for query, rank in zip(q0, r0, strict=True)]


def failure_analysis(baseline: Mapping[str, Any], results: Mapping[str, Any], direction: str) -> FailureAnalysis:
    """Queries whose first-hit rank got worse under the run than under M0, worst first."""
    base = _first_hit_ranks(baseline, direction)
    if isinstance(base, str):
        return FailureAnalysis(direction, note=f"skipped: M0 has {base}")
    run = _first_hit_ranks(results, direction)
    if isinstance(run, str):
        return FailureAnalysis(direction, note=f"skipped: the run has {run}")
    aligned = _align(base, run)
    if isinstance(aligned, str):
        return FailureAnalysis(direction, note=f"skipped: {aligned}")
    changes = [RankChange(direction, query, m0, m1) for query, m0, m1 in aligned]
    worse = sorted((c for c in changes if c.change > 0), key=lambda c: (-c.change, c.m0_rank, c.query))
    return FailureAnalysis(
        direction=direction,
        worse=tuple(worse),
        n_queries=len(changes),
        n_better=sum(c.change < 0 for c in changes),
        n_same=sum(c.change == 0 for c in changes),
    )


def differing_test_set_counts(baseline: Mapping[str, Any], results: Mapping[str, Any]) -> list[str]:
    """Test-set counts (n_pairs, n_recipes, n_images) where a run differs from M0."""
    return [
        name
        for name in ("n_pairs", "n_recipes", "n_images")
        if as_number(baseline.get(name)) is not None
        and as_number(results.get(name)) is not None
        and as_number(baseline.get(name)) != as_number(results.get(name))
    ]


def _comparison_json(comparison: MetricComparison | None) -> dict[str, Any] | None:
    if comparison is None:
        return None
    ci = list(comparison.ci) if comparison.ci is not None else None
    return {"m0": comparison.m0, "m1": comparison.m1, "diff": comparison.diff, "ci": ci}


def _failures_json(analyses: Mapping[str, FailureAnalysis]) -> dict[str, Any]:
    return {
        direction: {
            "analysed": analysis.analysed,
            "note": analysis.note,
            "n_queries": analysis.n_queries,
            "n_worse": len(analysis.worse),
            "n_better": analysis.n_better,
            "n_same": analysis.n_same,
        }
        for direction, analysis in analyses.items()
    }


@dataclass(frozen=True)
class Findings:
    """Everything the report concludes, computed once and shared by the summary, markdown and figures."""

    baseline: Mapping[str, Any]
    runs: Mapping[str, RunArtifacts]
    verdicts: Mapping[str, H1Verdict]
    failures: Mapping[str, Mapping[str, FailureAnalysis]]
    selection: Selection
    holm: Mapping[str, float]  # run -> Holm-adjusted p-value of the primary metric

    @property
    def best_run(self) -> str | None:
        """The selected run (on validation when runs have it)."""
        return self.selection.run


def analyse(baseline: Mapping[str, Any], runs: Mapping[str, RunArtifacts]) -> Findings:
    """H1 verdicts, failure cases per direction and the best run, for runs in key order."""
    ordered = {key: runs[key] for key in sorted(runs)}
    return Findings(
        baseline=baseline,
        runs=ordered,
        verdicts={key: h1_verdict(run.results) for key, run in ordered.items()},
        failures={
            key: {direction: failure_analysis(baseline, run.results, direction) for direction in DIRECTIONS}
            for key, run in ordered.items()
        },
        selection=select_run(ordered),
        holm=holm_over_runs(ordered),
    )


def build_summary(findings: Findings) -> dict[str, Any]:
    """JSON-safe summary: per run the primary difference, its CI and the H1 verdict; the best run; counts."""
    baseline, runs, verdicts = findings.baseline, findings.runs, findings.verdicts
    direction, metric = parse_metric_path(None)
    per_run = {}
    for key, run in runs.items():
        verdict = verdicts[key]
        per_run[key] = {
            "status": verdict.status,
            "h1_supported": verdict.supported,
            "upstream_h1_supported": verdict.upstream_flag,
            "primary_metric": f"{verdict.direction}/{verdict.metric}",
            "primary": _comparison_json(verdict.primary),
            "reason": verdict.reason,
            "test_set_mismatch": differing_test_set_counts(baseline, run.results),
            "failure_cases": _failures_json(findings.failures[key]),
            "role": "selected" if key == findings.selection.run else "exploratory",
            "validation_best": _validation_json(run),
            "p_value": as_number(lookup(run.results, "comparison_to_baseline", direction, metric, "p_value")),
            "holm_adjusted_p": findings.holm.get(key),
        }
    statuses = Counter(verdict.status for verdict in verdicts.values())
    return {
        "primary_metric": f"{direction}/{metric}",
        "decision_rule": "H1 supported only if the lower bound of the 95 % CI of M1 - M0 is > 0",
        "baseline": {
            "n_pairs": as_number(baseline.get("n_pairs")),
            "n_recipes": as_number(baseline.get("n_recipes")),
            "n_images": as_number(baseline.get("n_images")),
            "primary_value": metric_value(baseline, direction, metric),
        },
        "n_runs": len(runs),
        "n_compared": len(runs) - statuses[H1_NOT_COMPARED],
        "n_supported": statuses[H1_SUPPORTED],
        "n_not_supported": statuses[H1_NOT_SUPPORTED],
        "n_not_compared": statuses[H1_NOT_COMPARED],
        "h1_supported_by_any_run": statuses[H1_SUPPORTED] > 0,
        "best_run": findings.best_run,
        "selection": {
            "run": findings.selection.run,
            "basis": findings.selection.basis,
            "validation_score": list(findings.selection.validation_score) if findings.selection.validation_score
            else None,
            "epoch": findings.selection.epoch,
            "rule": "the run with the best validation text→image R@1 (then MRR); H1 is judged on the test set "
                    "for that run only, the others are exploratory",
        },
        "h1_supported_by_selected_run": (findings.verdicts[findings.selection.run].supported
                                         if findings.selection.run in findings.verdicts else None),
        "family_wise": {
            "method": "Holm–Bonferroni over the one-sided paired-bootstrap p-values of every compared run",
            "alpha": FAMILY_ALPHA,
            "supported_runs": sorted(k for k, p in findings.holm.items() if p < FAMILY_ALPHA),
        },
        "runs": per_run,
    }


def _validation_json(run: RunArtifacts) -> dict[str, Any] | None:
    best = _validation_best(run)
    return None if best is None else {"t2i_R@1": best[0][0], "t2i_MRR": best[0][1], "epoch": best[1]}
