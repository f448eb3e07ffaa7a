"""Sweeps from the UI side: a sweep file submitted to the lake registers its runs and launches them."""

import json
import tempfile
from pathlib import Path

import dagster as dg
from pydantic import Field

from clipfood_assets.defs.model_zone.jobs import train_run_job
from clipfood_assets.defs.model_zone.partitions import experiment_runs
from clipfood_assets.defs.resources import ExperimentSettings, LakeResource
from clipfood_assets.lake.base import Lake
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, SWEEPS_PREFIX
from clipfood_assets.modeling.runs import read_run_overrides, register_run, runs_in_lake
from clipfood_assets.modeling.sweep import Sweep, load_sweep

SWEEP_TAG = "clipfood/sweep"


def read_sweep(zone_lake: Lake, key: str, settings: ExperimentSettings) -> Sweep:
    """A sweep file of the lake, expanded and validated (ValueError naming the object when bad)."""
    with tempfile.TemporaryDirectory(prefix="clipfood-sweep-") as tmp:
        path = Path(tmp) / Path(key).name  # the file's stem names the sweep when it has no name
        path.write_bytes(zone_lake.get_bytes(FINE_TUNING_ZONE, key))
        try:
            return load_sweep(path, settings.experiment_config_path(), settings.resolve_base_model())
        except ValueError as exc:
            raise ValueError(f"{zone_lake.uri(FINE_TUNING_ZONE, key)}: {exc}") from None


def stored_sweeps(zone_lake: Lake, settings: ExperimentSettings, log=None) -> dict[str, Sweep]:
    """Every valid sweep in the lake by name (submitted and run by the CLI); invalid ones are logged and left out."""
    sweeps = {}
    for obj in zone_lake.list(FINE_TUNING_ZONE, SWEEPS_PREFIX):
        if not obj.key.endswith(".yaml"):
            continue
        try:
            sweep = read_sweep(zone_lake, obj.key, settings)
        except ValueError as exc:
            if log is not None:
                log.warning(str(exc))
            continue
        sweeps[sweep.name] = sweep
    return sweeps


def _already_trained(zone_lake: Lake, evaluated: set[str], point) -> bool:
    """The point's run is in the lake, evaluated, with exactly these overrides. Asked of the lake, not of
    the instance's materializations, which outlive a partition deleted in the UI."""
    return point.run_key in evaluated and read_run_overrides(zone_lake, point.run_key) == point.overrides


@dg.sensor(
    job=train_run_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=f"Watches {FINE_TUNING_ZONE}/{SWEEPS_PREFIX}*.yaml (`clipfood sweep FILE --submit`): a new or "
    "changed sweep registers one experiment run per point and launches them; the gpu pool trains one at a time "
    "and the report follows by automation.",
)
def sweep_sensor(context: dg.SensorEvaluationContext, lake: LakeResource, settings: ExperimentSettings):
    zone_lake = lake.get_lake()
    seen = json.loads(context.cursor) if context.cursor else {}
    files = {o.key: o.etag for o in zone_lake.list(FINE_TUNING_ZONE, SWEEPS_PREFIX)
             if o.key.endswith(".yaml") and "/" not in o.key[len(SWEEPS_PREFIX):]}  # not ran/: run by the CLI
    changed = [key for key, etag in files.items() if seen.get(key) != etag]
    if not changed:
        return dg.SkipReason("no new or changed sweep file")
    requests, partitions, problems = [], [], []
    known = set(context.instance.get_dynamic_partitions(experiment_runs.name))
    evaluated = set(runs_in_lake(zone_lake, evaluated=True))
    for key in changed:
        try:
            sweep = read_sweep(zone_lake, key, settings)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        for point in sweep.points:
            if _already_trained(zone_lake, evaluated, point):
                # e.g. the sweep ran from the CLI, or an unchanged point of an edited file; a partition
                # deleted in the UI comes back, so the UI shows what the lake holds.
                if point.run_key not in known:
                    partitions.append(point.run_key)
                continue
            register_run(zone_lake, point.run_key, settings.experiment_config_path(), point.overrides,
                         settings.resolve_base_model())
            partitions.append(point.run_key)
            requests.append(dg.RunRequest(
                partition_key=point.run_key,
                run_key=f"{key}@{files[key]}:{point.run_key}",  # a re-submitted (changed) file runs again
                tags={SWEEP_TAG: sweep.name},
            ))
    context.update_cursor(json.dumps(files, sort_keys=True))
    for problem in problems:
        context.log.error(f"sweep refused: {problem}")
    added = [experiment_runs.build_add_request(list(dict.fromkeys(partitions)))] if partitions else []
    if not requests:
        reason = "; ".join(problems)[:1000] or "every point of the changed sweep(s) is trained already"
        return dg.SensorResult(skip_reason=reason, dynamic_partitions_requests=added) if added else dg.SkipReason(reason)
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=added)


class SweepSubmission(dg.Config):
    sweep_yaml: str = Field(
        description="The sweep file's text: name, base (overrides for every point), and grid (config key -> list "
        "of values) or runs (a list of overrides). See configs/sweeps/demo_rank_lr.yaml."
    )


@dg.op(description="Validates a sweep and stores it in the lake, where the sweep_sensor launches its runs.")
def store_sweep(context: dg.OpExecutionContext, config: SweepSubmission, lake: LakeResource,
                settings: ExperimentSettings) -> None:
    from clipfood_assets.lake.layout import sweep_key
    from clipfood_assets.yaml_files import yaml_mapping

    must_be = "a sweep is a mapping (name, base, grid or runs)"
    try:
        spec = yaml_mapping(config.sweep_yaml, "sweep_yaml", must_be, empty=f"{must_be}, got an empty document")
        sweep = load_sweep(spec, settings.experiment_config_path(), settings.resolve_base_model(),
                           name=str(spec.get("name") or "sweep"))
    except ValueError as exc:
        # The text itself is wrong: retrying cannot help.
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    zone_lake = lake.get_lake()
    zone_lake.put_bytes(FINE_TUNING_ZONE, sweep_key(sweep.name), config.sweep_yaml.encode("utf-8"), "application/yaml")
    context.log.info(f"sweep {sweep.name}: {len(sweep.points)} runs ({', '.join(sweep.run_keys)}) stored; the "
                     "sweep_sensor launches them within a minute")


@dg.job(description="Submit a sweep from the launchpad: paste the sweep YAML; the sweep_sensor then registers one "
        "experiment run per point and launches them.")
def submit_sweep():
    store_sweep()
