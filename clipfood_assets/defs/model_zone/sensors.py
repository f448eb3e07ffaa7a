"""The instance's experiment-run partitions follow the lake, which is the truth about runs."""

import dagster as dg

from clipfood_assets.defs.adoption import adoptable_keys, adoption_events
from clipfood_assets.defs.model_zone.partitions import experiment_runs
from clipfood_assets.defs.resources import LakeResource
from clipfood_assets.modeling.runs import runs_in_lake


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds an experiment_runs partition for every run folder the lake holds (runs trained by the CLI, "
    "by another instance, or before this instance existed) and records the adapters and results the lake holds "
    "for them, so the UI shows them; launches nothing.",
)
def lake_runs_sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
    zone_lake = lake.get_lake()
    known = set(context.instance.get_dynamic_partitions(experiment_runs.name))
    runs = runs_in_lake(zone_lake)
    missing = [key for key in runs if key not in known]
    adopted = []
    if context.repository_def is not None:
        asset_graph = context.repository_def.asset_graph
        for run_key in runs:
            adopted += adoption_events(context.instance, zone_lake, asset_graph,
                                       adoptable_keys(asset_graph, partitioned=True), partition=run_key)
    if not missing and not adopted:
        return dg.SkipReason(f"the instance knows every run of the lake ({len(known)} partitions)")
    if missing:
        context.log.info(f"registering {len(missing)} runs found in the lake: {', '.join(missing[:20])}")
    return dg.SensorResult(
        skip_reason=f"registered {len(missing)} runs and {len(adopted)} run artifacts the lake holds",
        dynamic_partitions_requests=[experiment_runs.build_add_request(missing)] if missing else [],
        asset_events=adopted)
