"""Model-zone checks: metrics are in range; a warning when a run does not beat the baseline."""


import math

import dagster as dg

from clipfood_assets.defs.model_zone.partitions import experiment_runs
from clipfood_assets.lake.artifacts import StoredBundle

FRACTIONS = ("R@1", "R@5", "R@10", "MRR")
RANKS = ("MedianRank", "MeanRank")


def metrics_out_of_range(results: dict) -> list[str]:
    problems = []
    for direction in ("text_to_image", "image_to_text"):
        metrics = results.get("metrics", {}).get(direction)
        if not metrics:
            problems.append(f"{direction}: missing")
            continue
        for name, value in metrics.items():
            bad = value is None or not math.isfinite(value)
            bad = bad or (name in FRACTIONS and not 0.0 <= value <= 1.0) or (name in RANKS and value < 1.0)
            if bad:
                problems.append(f"{direction} {name} = {value}")
        if metrics.get("R@1", 0) > metrics.get("R@5", 1) or metrics.get("R@5", 0) > metrics.get("R@10", 1):
            problems.append(f"{direction}: recall not monotone in K")
    return problems


def _range_result(problems: list[str]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"problems": len(problems), "details": dg.MetadataValue.md(
            "\n".join(f"- {p}" for p in problems) or "every metric finite and in range")},
    )


@dg.asset_check(asset="baseline_results", description="Every metric is finite and in its range; R@K grows with K.")
def baseline_metrics_in_range(baseline_results: StoredBundle) -> dg.AssetCheckResult:
    return _range_result(metrics_out_of_range(baseline_results.read("results_baseline.json")))


@dg.asset_check(
    asset="lora_results",
    partitions_def=experiment_runs,
    description="Every metric is finite and in its range; R@K grows with K.",
)
def lora_metrics_in_range(context: dg.AssetCheckExecutionContext, lora_results: StoredBundle) -> dg.AssetCheckResult:
    return _range_result(metrics_out_of_range(lora_results.read("results_lora.json")))


@dg.asset_check(
    asset="lora_results",
    partitions_def=experiment_runs,
    description="Warns when M1 does not beat M0 on the primary metric (text→image R@1): the lower bound of the "
    "paired-bootstrap CI of M1−M0 must be above 0.",
)
def lora_beats_baseline(context: dg.AssetCheckExecutionContext, lora_results: StoredBundle) -> dg.AssetCheckResult:
    comparison = lora_results.read("results_lora.json")["comparison_to_baseline"]
    primary = comparison["text_to_image"]["R@1"]
    return dg.AssetCheckResult(
        passed=bool(comparison["h1_supported"]),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "t2i R@1 M0": round(float(primary["m0"]), 3),
            "t2i R@1 M1": round(float(primary["m1"]), 3),
            "M1−M0": round(float(primary["diff"]), 3),
            "CI low": round(float(primary["ci"][0]), 3),
            "CI high": round(float(primary["ci"][1]), 3),
        },
    )


MODEL_ZONE_CHECKS = [baseline_metrics_in_range, lora_metrics_in_range, lora_beats_baseline]
