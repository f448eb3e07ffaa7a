"""The instance's experiment-run partitions follow the lake, which is the truth about runs."""

import dagster as dg

from clipfood_assets.defs.model_zone.partitions import experiment_runs
from clipfood_assets.defs.resources import LakeResource
from clipfood_assets.modeling.runs import runs_in_lake


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds an experiment_runs partition for every run folder the lake holds (runs trained by the CLI, "
    "by another instance, or before this instance existed), so the UI shows them; launches nothing.",
)
def lake_runs_sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
    known = set(context.instance.get_dynamic_partitions(experiment_runs.name))
    missing = [key for key in runs_in_lake(lake.get_lake()) if key not in known]
    if not missing:
        return dg.SkipReason(f"the instance knows every run of the lake ({len(known)} partitions)")
    context.log.info(f"registering {len(missing)} runs found in the lake: {', '.join(missing[:20])}")
    return dg.SensorResult(dynamic_partitions_requests=[experiment_runs.build_add_request(missing)])
