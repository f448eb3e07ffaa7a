"""Rebuild when the trusted zone changes: any image or recipes.jsonl added, changed or deleted.

A tick's work is bounded whatever the zone's size. recipes.jsonl is one stat. The images are listed
by a pass that goes on across ticks: each tick lists at most CLIPFOOD_SENSOR_OBJECTS_PER_TICK objects
for about CLIPFOOD_SENSOR_SECONDS_PER_TICK seconds and leaves in the cursor where it stopped and the
digest so far (an ImagesPass, ~300 bytes). A pass that completes gives exactly the version
fingerprint_trusted_zone gives, the one the data zone records. A tick lists for half its seconds at
least after its first object, so a pass takes at most P = ceil(N / min(objects per tick, rate x
seconds / 2)) ticks at the lake's listing rate, and a change to an image is seen within 2P ticks: the
rest of the current pass, and the next one when the pass had gone past it.
With CLIPFOOD_SENSOR_SQS_URL the bucket's notifications are read first: a notified change launches
the refresh in the tick that reads it, and the pass remains the safety net for lost events.
"""


import hashlib
import json
import time

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG  # what ObserveResult writes too

from clipfood_assets.defs.adoption import adoptable_keys, adoption_events
from clipfood_assets.defs.resources import LakeResource
from clipfood_assets.defs.trusted_zone.assets import zone_versions
from clipfood_assets.defs.trusted_zone.jobs import refresh_job
from clipfood_assets.lake.base import Lake, LakeError
from clipfood_assets.lake.events import BucketChanges, SqsBucketEvents
from clipfood_assets.lake.fingerprint import ImagesPass, ZoneFingerprint, fingerprint_trusted_zone, recipes_etag
from clipfood_assets.lake.layout import TRUSTED_IMAGES_PREFIX, TRUSTED_ZONE
from clipfood_assets.lake.provenance import zone_built_from
from clipfood_assets.settings import ClipfoodSettings

VERSION_TAG = "clipfood/trusted_zone_version"
ATTEMPT_TAG = "clipfood/attempt"
# A failed refresh of an unchanged zone is retried after 1, 2, 4 min, then left for a person.
RETRY_BACKOFF_S = 60
MAX_ATTEMPTS = 4
CURSOR_FORMAT = 2  # a cursor of another format (the whole-zone fingerprint of before #20) starts afresh
_UNFINISHED = [s for s in dg.DagsterRunStatus
               if s not in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)]


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


def _refresh_under_way(instance: dg.DagsterInstance):
    """A refresh run not finished yet, whichever version it was for: a second one would race it for the
    data zone, and the one that follows it sees what changed meanwhile."""
    records = instance.get_run_records(filters=dg.RunsFilter(job_name=refresh_job.name, statuses=_UNFINISHED),
                                       limit=1)
    return records[0].dagster_run if records else None


def _deliberate_refusal(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The message of a step that refused on purpose (raised dg.Failure, e.g. the refresh guard):
    retrying cannot help until the zone changes or a person accepts it."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        data = record.dagster_event.step_failure_data
        if data.user_failure_data is not None:
            return data.user_failure_data.description or data.error.message
    return None


def _load(cursor: str | None) -> dict:
    state = json.loads(cursor) if cursor else {}
    return state if state.get("format") == CURSOR_FORMAT else {"format": CURSOR_FORMAT}


def _read_notifications(settings: ClipfoodSettings, deadline: float) -> tuple[BucketChanges | None, str]:
    """The images changed since the last read, and how the report says it; None when not configured or unreachable."""
    if not settings.sensor_sqs_url:
        return None, ""
    keys = [None if key is None else key.get_secret_value()
            for key in (settings.minio_access_key, settings.minio_secret_key)]
    try:
        events = SqsBucketEvents(settings.sensor_sqs_url, *keys, region=settings.minio_region)
        changes = events.read(TRUSTED_ZONE, TRUSTED_IMAGES_PREFIX, deadline)
    except LakeError as exc:
        return None, f"notifications unavailable, listing only ({str(exc)[:200]})"
    if not changes.count:
        return changes, f"no image changes notified ({changes.messages} messages)"
    return changes, f"{changes.count} image changes notified ({', '.join(changes.examples)}" + (
        ", ...)" if changes.count > len(changes.examples) else ")")


def _progress(listing: ImagesPass, complete: bool, listed: int, seconds: float, known: dict | None) -> str:
    """How far the pass is: "pass 37 % (370,000 objects; ...)", against the size of the last complete pass."""
    tick = f"{listed:,} listed this tick in {seconds:.1f} s"
    if complete:
        return f"pass complete ({listing.n:,} objects; {tick})"
    if known and known["n_images"]:
        return f"pass {min(99, 100 * listing.n // known['n_images'])} % ({listing.n:,} objects; {tick})"
    return f"first pass ({listing.n:,} objects so far; {tick})"


@dg.sensor(
    job=refresh_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Lists the trusted zone in a pass that goes on across ticks (at most "
    "CLIPFOOD_SENSOR_OBJECTS_PER_TICK objects and CLIPFOOD_SENSOR_SECONDS_PER_TICK seconds a tick; the cursor "
    "holds where it is), stats recipes.jsonl every tick and, with CLIPFOOD_SENSOR_SQS_URL, reads the bucket's "
    "notifications first. Records the zone's versions as observations of trusted_recipes and trusted_images, and "
    "rebuilds the data zone and the baseline when they were not built from this version. A failed rebuild of an "
    f"unchanged zone is retried with backoff ({RETRY_BACKOFF_S} s doubling, {MAX_ATTEMPTS} attempts).",
)
def trusted_zone_sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
    settings = ClipfoodSettings.from_env()
    zone_lake = lake.get_lake()
    tick_start = time.monotonic()
    budget = settings.sensor_seconds_per_tick
    state = _load(context.cursor)
    old_state = json.dumps(state, sort_keys=True)
    now = time.time()

    # Notifications first (a third of the budget at most, on top of the listing's; a backlog is read on by the
    # next ticks).
    changes, notified_report = _read_notifications(settings, tick_start + budget / 3)
    if changes is not None and changes.count:
        pending = state.get("notified") or {"changes": 0}
        # A version of its own per batch: no built zone has it, and each batch is a new state to rebuild.
        version = hashlib.sha256(f"{state.get('version')}|{changes.identity}".encode()).hexdigest()[:16]
        state["notified"] = {"changes": pending["changes"] + changes.count, "at": now, "version": version}

    # The pass, resumed where the last tick left it.
    under_way = state.get("pass")
    listing = ImagesPass.from_dict(under_way) if under_way else ImagesPass()
    pass_started = under_way["started"] if under_way else now
    before_n = listing.n
    # The listing's own budget, whatever the notifications took: a tick moves the pass on by at least half of
    # it, so a pass takes at most ceil(N / (rate x budget / 2)) ticks at the lake's listing rate.
    complete = listing.advance(zone_lake, settings.sensor_objects_per_tick, budget)
    known = state.get("zone")  # the fingerprint of the last tick that had one
    progress = _progress(listing, complete, listing.n - before_n, time.monotonic() - tick_start, known)
    if complete:
        state.pop("pass", None)
        images = {"images_digest": listing.digest, "n_images": listing.n, "images_bytes": listing.size}
        if state.get("notified") and pass_started >= state["notified"]["at"]:
            del state["notified"]  # this pass began after the notifications were read: it saw those changes
    else:
        state["pass"] = {**listing.to_dict(), "started": pass_started}
        images = None if known is None else {k: known[k] for k in ("images_digest", "n_images", "images_bytes")}
    report = "; ".join(part for part in (progress, notified_report) if part)
    context.log.info(report)

    def save() -> None:
        if json.dumps(state, sort_keys=True) != old_state:
            context.update_cursor(json.dumps(state, sort_keys=True))

    if images is None:
        save()
        return dg.SkipReason(f"first pass over the trusted zone under way; nothing to compare yet [{report}]")

    fingerprint = ZoneFingerprint(recipes_etag(zone_lake), **images)
    current = fingerprint.to_dict()
    before = known
    events = []
    if before != current:
        events = observations(zone_lake, fingerprint)
        state["zone"] = current
    notified = state.get("notified")
    version = notified["version"] if notified else fingerprint.version
    if state.get("version") != version:
        state["version"], state["since"] = version, now
    since = state["since"]
    save()

    def skip(reason: str, adopted: list | None = None) -> dg.SensorResult:
        return dg.SensorResult(skip_reason=f"{reason} [{report}]", asset_events=events + (adopted or []))

    if fingerprint.recipes_etag is None:
        return skip("trusted zone has no recipes.jsonl yet")
    # Asked of the lake, not the instance: a new instance over a built lake launches nothing.
    if not notified and zone_built_from(zone_lake) == version:
        adopted = _adopt(context, zone_lake, version)
        return skip("data zone and baseline are built from this trusted zone (version "
                    f"{version}); nothing to do"
                    + (f"; recorded {len(adopted)} assets this instance had not seen" if adopted else ""), adopted)
    running = _refresh_under_way(context.instance)
    if running is not None:
        return skip(f"a refresh (run {running.run_id[:8]}, version {running.tags.get(VERSION_TAG)}) is under way")
    attempts = _attempts(context.instance, version, since)
    if not attempts and state.get("requested") == version:
        return skip("trusted zone unchanged")
    if attempts:
        last = attempts[0]
        if last.dagster_run.status != dg.DagsterRunStatus.FAILURE:
            if notified:
                return skip(f"refreshed after {notified['changes']} notified changes; the pass confirms the version")
            return skip(f"the last refresh for version {version} ended {last.dagster_run.status.value}; "
                        "launch refresh_from_trusted_zone to try again")
        refusal = _deliberate_refusal(context.instance, last.dagster_run.run_id)
        if refusal:
            return skip(f"the refresh for version {version} was refused, not retried: {refusal[:300]}")
        if len(attempts) >= MAX_ATTEMPTS:
            return skip(f"{len(attempts)} refreshes for version {version} failed; fix the cause (see run "
                        f"{last.dagster_run.run_id[:8]}) and launch refresh_from_trusted_zone, or change the zone")
        wait = RETRY_BACKOFF_S * 2 ** (len(attempts) - 1)
        ended = last.end_time or last.update_timestamp.timestamp()
        if time.time() - ended < wait:
            return skip(f"refresh failed; retrying in {wait - (time.time() - ended):.0f} s "
                        f"(attempt {len(attempts) + 1} of {MAX_ATTEMPTS})")
    if attempts:
        change = "retry after a failed refresh"
    elif notified:
        change = f"{notified['changes']} image changes notified by the bucket"
    else:  # the zone as last seen, not yet built (e.g. changed again while a notified refresh ran)
        change = describe_change(before, current) or "the data zone was built from another version"
    state["requested"] = version
    save()
    return dg.SensorResult(
        run_requests=[dg.RunRequest(
            # One key per zone state entered and attempt: a zone reverted to an earlier state (A -> B -> A)
            # is rebuilt, and retries are new runs.
            run_key=f"{version}-{since * 1000:.0f}-{len(attempts) + 1}",
            tags={"clipfood/trusted_zone_change": change[:200], "clipfood/images": str(current["n_images"]),
                  VERSION_TAG: version, ATTEMPT_TAG: str(len(attempts) + 1)},
        )],
        asset_events=events,
    )
