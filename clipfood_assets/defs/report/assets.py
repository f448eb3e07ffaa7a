"""The comparison report: M0 against every experiment run, with the original notebooks' plots."""


import dagster as dg

from clipfood_assets.defs.io_manager import zone_artifact
from clipfood_assets.defs.meta import rounded
from clipfood_assets.defs.model_zone.sweeps import stored_sweeps
from clipfood_assets.defs.resources import ExperimentSettings, LakeResource
from clipfood_assets.lake.artifacts import Bundle, IncompleteArtifact, StoredBundle, read_bundle
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, REPORT_PREFIX, run_prefix
from clipfood_assets.modeling.runs import runs_in_lake


# Eager, except that a run that is missing (added, not trained yet, or failed) does not hold the
# report back: it reports the runs that exist. A run in progress still makes it wait.
REPORT_CONDITION = (
    dg.AutomationCondition.eager()
    .without(~dg.AutomationCondition.any_deps_missing())
    .with_label("eager, missing runs ignored")
    & ~dg.AutomationCondition.any_deps_missing().ignore(dg.AssetSelection.assets("lora_results"))
)


@dg.asset(
    group_name="report",
    deps=["lora_results"],
    metadata=zone_artifact(REPORT_PREFIX),
    description="M0 vs every experiment run: report.md (H1 judged by the paired-bootstrap CI, not by point "
    "estimates), learning curves, metric bars with CIs, efficiency, retrieval examples, failure cases.",
    kinds={"matplotlib", "markdown"},
    code_version="1",
    automation_condition=REPORT_CONDITION,
)
def comparison_report(
    context: dg.AssetExecutionContext, lake: LakeResource, settings: ExperimentSettings,
    baseline_results: StoredBundle,
) -> dg.Output[Bundle]:
    from clipfood_assets.reporting import RunArtifacts, build_comparison_report

    zone_lake = lake.get_lake()
    runs = {}
    # Every run the lake holds, whatever this instance knows of (a new instance over an old lake).
    for run_key in runs_in_lake(zone_lake, evaluated=True):
        try:
            adapters = read_bundle(zone_lake, FINE_TUNING_ZONE, run_prefix(run_key), "lora_adapters")
            results = read_bundle(zone_lake, FINE_TUNING_ZONE, run_prefix(run_key), "lora_results")
        except IncompleteArtifact as exc:
            context.log.info(f"run {run_key} left out of the report: {exc}")
            continue
        runs[run_key] = RunArtifacts(
            results=results.read("results_lora.json"),
            examples=results.read("examples_top5.json"),
            training_logs=adapters.read("training_logs.json"),
            config=adapters.read("config.yaml"),
        )
    report = build_comparison_report(
        baseline_results.read("results_baseline.json"),
        baseline_results.read("examples_top5.json"),
        runs,
        load_image=lambda key: zone_lake.get_bytes(FINE_TUNING_ZONE, key),
        sweeps={name: [(p.run_key, p.values) for p in sweep.points]
                for name, sweep in stored_sweeps(zone_lake, settings, context.log).items()},
    )
    summary = report.summary
    metadata = {
        "runs": len(runs),
        "runs supporting H1": int(summary.get("n_supported", 0)),
        "best run": str(summary.get("best_run") or "none"),
        "report": dg.MetadataValue.md(report.markdown_with_inline_figures()),
        "summary": dg.MetadataValue.json(rounded(summary)),
    }
    return dg.Output(Bundle(dict(report.files)), metadata=metadata)
