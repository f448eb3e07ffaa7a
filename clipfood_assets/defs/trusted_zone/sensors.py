"""Rebuild when the trusted zone changes: any image or recipes.jsonl added, changed or deleted."""


import json
import time

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG  # what ObserveResult writes too

from clipfood_assets.defs.adoption import adoptable_keys, adoption_events
from clipfood_assets.defs.trusted_zone.jobs import refresh_job
from clipfood_assets.defs.resources import LakeResource
from clipfood_assets.defs.trusted_zone.assets import zone_versions
from clipfood_assets.lake.base import Lake
from clipfood_assets.lake.fingerprint import ZoneFingerprint, fingerprint_trusted_zone
from clipfood_assets.lake.provenance import zone_built_from

VERSION_TAG = "clipfood/trusted_zone_version"
ATTEMPT_TAG = "clipfood/attempt"
# A failed refresh of an unchanged zone is retried after 1, 2, 4 min, then left for a person.
RETRY_BACKOFF_S = 60
MAX_ATTEMPTS = 4


def describe_change(before: dict | None, after: dict) -> str:
    if before is None:
        return "first observation"
    parts = []
    if before.get("recipes_etag") != after["recipes_etag"]:
        parts.append("recipes.jsonl " + ("deleted" if after["recipes_etag"] is None else "changed"))
    if before.get("images_digest") != after["images_digest"]:
        delta = after["n_images"] - before.get("n_images", 0)
        parts.append(f"images changed ({before.get('n_images', 0)} -> {after['n_images']}, {delta:+d})")
    return "; ".join(parts)


def observations(zone_lake: Lake, fingerprint: ZoneFingerprint) -> list[dg.AssetObservation]:
    """The trusted-zone assets' observations as the sensor records them (same versions as observing them)."""
    return [
        dg.AssetObservation(asset_key=key, metadata=metadata, tags={DATA_VERSION_TAG: version})
        for key, (version, metadata) in zone_versions(zone_lake, fingerprint).items()
    ]


def record_observations(instance: dg.DagsterInstance, zone_lake: Lake) -> ZoneFingerprint:
    """Record the zone's current versions, so what is built from it next is not shown as stale."""
    fingerprint = fingerprint_trusted_zone(zone_lake)
    for event in observations(zone_lake, fingerprint):
        instance.report_runless_asset_event(event)
    return fingerprint


def _adopt(context: dg.SensorEvaluationContext, zone_lake: Lake, version: str) -> list[dg.AssetMaterialization]:
    """The lake's built assets this instance has never recorded (a new instance over an old lake)."""
    if context.repository_def is None:  # evaluated outside a code location: nothing to adopt into
        return []
    asset_graph = context.repository_def.asset_graph
    return adoption_events(context.instance, zone_lake, asset_graph, adoptable_keys(asset_graph, partitioned=False),
                           **{"trusted zone version": version})


def _attempts(instance: dg.DagsterInstance, version: str, since: float) -> list:
    """Refresh runs requested for this zone version since the zone entered it, newest first."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=refresh_job.name, tags={VERSION_TAG: version}), limit=50)
    return [r for r in records if r.create_timestamp.timestamp() >= since]


def _deliberate_refusal(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The message of a step that refused on purpose (raised dg.Failure, e.g. the refresh guard):
    retrying cannot help until the zone changes or a person accepts it."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        data = record.dagster_event.step_failure_data
        if data.user_failure_data is not None:
            return data.user_failure_data.description or data.error.message
    return None


@dg.sensor(
    job=refresh_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Lists the trusted zone (streamed), records its versions as observations of trusted_recipes and "
    "trusted_images, and rebuilds the data zone and the baseline when they were not built from this version. "
    f"A failed rebuild of an unchanged zone is retried with backoff ({RETRY_BACKOFF_S} s doubling, "
    f"{MAX_ATTEMPTS} attempts).",
)
def trusted_zone_sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
    zone_lake = lake.get_lake()
    fingerprint = fingerprint_trusted_zone(zone_lake)
    current = fingerprint.to_dict()
    state = json.loads(context.cursor) if context.cursor else None
    before = None if state is None else {k: v for k, v in state.items() if k != "since"}
    events = []
    since = state.get("since", 0.0) if state else 0.0
    if before != current:
        events = observations(zone_lake, fingerprint)
        since = time.time()
        context.update_cursor(json.dumps({**current, "since": since}, sort_keys=True))

    def skip(reason: str, adopted: list | None = None) -> dg.SensorResult:
        return dg.SensorResult(skip_reason=reason, asset_events=events + (adopted or []))

    if fingerprint.recipes_etag is None:
        return skip("trusted zone has no recipes.jsonl yet")
    # Asked of the lake, not the instance: a new instance over a built lake launches nothing.
    if zone_built_from(zone_lake) == fingerprint.version:
        adopted = _adopt(context, zone_lake, fingerprint.version)
        return skip("data zone and baseline are built from this trusted zone (version "
                    f"{fingerprint.version}); nothing to do"
                    + (f"; recorded {len(adopted)} assets this instance had not seen" if adopted else ""), adopted)
    attempts = _attempts(context.instance, fingerprint.version, since)
    if any(not r.dagster_run.is_finished for r in attempts):
        return skip(f"a refresh for version {fingerprint.version} is under way")
    if not attempts and before == current:
        return skip("trusted zone unchanged")
    if attempts:
        last = attempts[0]
        if last.dagster_run.status != dg.DagsterRunStatus.FAILURE:
            return skip(f"the last refresh for version {fingerprint.version} ended {last.dagster_run.status.value}; "
                        "launch refresh_from_trusted_zone to try again")
        refusal = _deliberate_refusal(context.instance, last.dagster_run.run_id)
        if refusal:
            return skip(f"the refresh for version {fingerprint.version} was refused, not retried: {refusal[:300]}")
        if len(attempts) >= MAX_ATTEMPTS:
            return skip(f"{len(attempts)} refreshes for version {fingerprint.version} failed; fix the cause (see run "
                        f"{last.dagster_run.run_id[:8]}) and launch refresh_from_trusted_zone, or change the zone")
        wait = RETRY_BACKOFF_S * 2 ** (len(attempts) - 1)
        ended = last.end_time or last.update_timestamp.timestamp()
        if time.time() - ended < wait:
            return skip(f"refresh failed; retrying in {wait - (time.time() - ended):.0f} s "
                        f"(attempt {len(attempts) + 1} of {MAX_ATTEMPTS})")
    change = describe_change(before, current) if before != current else "retry after a failed refresh"
    return dg.SensorResult(
        run_requests=[dg.RunRequest(
            # One key per zone state entered and attempt: a zone reverted to an earlier state (A -> B -> A)
            # is rebuilt, and retries are new runs.
            run_key=f"{fingerprint.version}-{since * 1000:.0f}-{len(attempts) + 1}",
            tags={"clipfood/trusted_zone_change": change[:200], "clipfood/images": str(current["n_images"]),
                  VERSION_TAG: fingerprint.version, ATTEMPT_TAG: str(len(attempts) + 1)},
        )],
        asset_events=events,
    )
