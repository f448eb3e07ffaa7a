"""The trusted-zone sensor against a real S3 server: skip when nothing changed, one run per change."""

import json

import dagster as dg
import pytest

from clipfood_assets.defs.resources import LakeResource
from clipfood_assets.defs.trusted_zone.sensors import trusted_zone_sensor
from clipfood_assets.lake.layout import RECIPES_KEY, TRUSTED_ZONE


@pytest.fixture
def s3_env(s3_server, s3_lake, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_lake


def _tick(cursor, instance=None):
    """One evaluation; the SensorResult is unpacked into its run request or its skip reason."""
    instance = instance or dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(cursor=cursor, instance=instance, resources={"lake": LakeResource()})
    result = trusted_zone_sensor(context)
    if isinstance(result, dg.SensorResult):
        result = result.run_requests[0] if result.run_requests else result.skip_reason.skip_message
    return result, context.cursor


def test_sensor_requests_one_run_per_change_and_skips_otherwise(s3_env):
    lake = s3_env
    result, cursor = _tick(None)
    assert "no recipes.jsonl" in result  # empty zone: nothing to build from

    lake.put_bytes(TRUSTED_ZONE, "images/soup__aaaaaaaaaa_0.jpg", b"jpeg-1")
    lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, b'{"id": "aaaaaaaaaa", "title_text_raw": "Tomato Soup"}\n')
    first, cursor = _tick(cursor)
    assert isinstance(first, dg.RunRequest)

    unchanged, cursor_after = _tick(cursor)
    assert "unchanged" in unchanged and cursor_after == cursor

    seen = {first.run_key}
    changes = [
        lambda: lake.put_bytes(TRUSTED_ZONE, "images/soup__aaaaaaaaaa_1.jpg", b"jpeg-2"),  # new image
        lambda: lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, b'{"id": "aaaaaaaaaa", "title_text_raw": "Soup"}\n'),
        lambda: lake.delete(TRUSTED_ZONE, "images/soup__aaaaaaaaaa_0.jpg"),  # deleted image
        lambda: lake.put_bytes(TRUSTED_ZONE, "images/soup__aaaaaaaaaa_1.jpg", b"jpeg-2-edited"),  # changed image
        lambda: lake.put_bytes(TRUSTED_ZONE, "images/soup__aaaaaaaaaa_1.jpg", b"jpeg-2"),  # reverted: rebuild too
    ]
    for change in changes:
        change()
        request, cursor = _tick(cursor)
        assert isinstance(request, dg.RunRequest), "a change must request exactly one run"
        assert request.run_key not in seen
        seen.add(request.run_key)
        again, _ = _tick(cursor)
        assert "unchanged" in again
    # The cursor stays compact whatever the zone size: a fingerprint, not a listing.
    assert len(cursor) < 600 and json.loads(cursor)["zone"]["n_images"] == 1


def test_sensor_targets_the_data_zone_and_baseline():
    from clipfood_assets.definitions import build_definitions

    defs = build_definitions()
    job = defs.resolve_job_def(trusted_zone_sensor.job_name)
    selected = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert {"train_pairs_positive", "test_pairs_positive", "pairing_quarantine", "fine_tuning_images",
            "augmented_training_pairs", "baseline_results"} <= selected
    assert "lora_adapters" not in selected  # runs are re-trained only when asked
    assert trusted_zone_sensor.default_status == dg.DefaultSensorStatus.RUNNING


def _zone(lake, title="Tomato Soup"):
    lake.put_bytes(TRUSTED_ZONE, "images/soup__aaaaaaaaaa_0.jpg", b"jpeg-1")
    lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, json.dumps({"id": "aaaaaaaaaa", "title_text_raw": title}).encode())


def _record_built(lake, version: str, artifacts=None):
    """What a successful refresh leaves in the lake: the data zone and the baseline, built from `version`."""
    from clipfood_assets.lake.provenance import REFRESHED_ARTIFACTS, record_built_from

    for name in artifacts or REFRESHED_ARTIFACTS:
        record_built_from(lake, name, version)


def _refresh_run(instance, request, status):
    from dagster._core.storage.dagster_run import DagsterRun

    run = DagsterRun(job_name="refresh_from_trusted_zone", tags=request.tags, status=status)
    instance.add_run(run)
    return run


def test_first_tick_after_a_build_launches_nothing_and_records_observations(s3_env):
    from clipfood_assets.lake.fingerprint import fingerprint_trusted_zone

    _zone(s3_env)
    # A new instance (no materializations at all) over a lake that is built: the lake is the truth.
    instance = dg.DagsterInstance.ephemeral()
    _record_built(s3_env, fingerprint_trusted_zone(s3_env).version)
    context = dg.build_sensor_context(cursor=None, instance=instance, resources={"lake": LakeResource()})
    result = trusted_zone_sensor(context)
    cursor = context.cursor
    assert not result.run_requests and "built from this trusted zone" in result.skip_reason.skip_message
    # The trusted-zone assets get the versions the sensor saw, the ones observing them gives.
    from clipfood_assets.defs.trusted_zone.assets import trusted_zone

    observed = {r.asset_key: r.data_version.value for r in
                trusted_zone(dg.build_asset_context(resources={"lake": LakeResource()}))}
    recorded = {e.asset_key: e.tags["dagster/data_version"] for e in result.asset_events}
    assert recorded == observed and len(recorded) == 2
    unchanged = trusted_zone_sensor(dg.build_sensor_context(cursor=cursor, instance=instance,
                                                            resources={"lake": LakeResource()}))
    assert not unchanged.asset_events  # observations are recorded when something changed, not every minute
    # ...and a later change is still a change.
    _zone(s3_env, title="Soup")
    request, _ = _tick(cursor, instance)
    assert isinstance(request, dg.RunRequest) and "recipes.jsonl changed" in request.tags["clipfood/trusted_zone_change"]


def test_a_failed_refresh_is_retried_with_backoff_then_left_for_a_person(s3_env, monkeypatch):
    from clipfood_assets.defs.trusted_zone import sensors

    _zone(s3_env)
    instance = dg.DagsterInstance.ephemeral()
    request, cursor = _tick(None, instance)
    assert isinstance(request, dg.RunRequest)
    _refresh_run(instance, request, dg.DagsterRunStatus.STARTED)
    waiting, cursor = _tick(cursor, instance)
    assert "under way" in waiting
    # The run fails: the next tick (zone unchanged) waits for the backoff, then asks again.
    for run in instance.get_runs():
        instance.report_run_failed(run)
    backing_off, cursor = _tick(cursor, instance)
    assert "retrying in" in backing_off
    monkeypatch.setattr(sensors, "RETRY_BACKOFF_S", 0)
    keys = {request.run_key}
    for attempt in range(2, sensors.MAX_ATTEMPTS + 1):
        retry, cursor = _tick(cursor, instance)
        assert isinstance(retry, dg.RunRequest), retry
        assert retry.tags[sensors.ATTEMPT_TAG] == str(attempt) and retry.run_key not in keys
        keys.add(retry.run_key)
        instance.report_run_failed(_refresh_run(instance, retry, dg.DagsterRunStatus.STARTED))
    gave_up, cursor = _tick(cursor, instance)
    assert f"{sensors.MAX_ATTEMPTS} refreshes" in gave_up and "failed" in gave_up
    # A change of the zone starts afresh.
    _zone(s3_env, title="Soup")
    fresh, _ = _tick(cursor, instance)
    assert isinstance(fresh, dg.RunRequest) and fresh.tags[sensors.ATTEMPT_TAG] == "1"


def test_a_refresh_refused_on_purpose_is_not_retried(s3_env, monkeypatch):
    from clipfood_assets.defs.trusted_zone import sensors

    _zone(s3_env)
    instance = dg.DagsterInstance.ephemeral()
    request, cursor = _tick(None, instance)
    monkeypatch.setattr(sensors, "RETRY_BACKOFF_S", 0)

    @dg.op
    def guarded():
        raise dg.Failure(description="refusing to refresh the data zone: no test pairs", allow_retries=False)

    @dg.job(name="refresh_from_trusted_zone")
    def refused_refresh():
        guarded()

    result = refused_refresh.execute_in_process(instance=instance, tags=request.tags, raise_on_error=False)
    assert not result.success
    refused, _ = _tick(cursor, instance)
    assert "refused, not retried" in refused and "no test pairs" in refused


def test_a_refresh_that_stopped_half_way_is_not_taken_for_a_built_zone(s3_env):
    from clipfood_assets.lake.fingerprint import fingerprint_trusted_zone

    _zone(s3_env)
    old = fingerprint_trusted_zone(s3_env).version
    _record_built(s3_env, old)
    _zone(s3_env, title="Pea Soup")  # the zone changes; the refresh rewrites the pairs, then dies
    _record_built(s3_env, fingerprint_trusted_zone(s3_env).version, artifacts=["positive_pairs"])
    request, _ = _tick(None)
    assert isinstance(request, dg.RunRequest)
    # A damaged record counts as never built, never as built.
    s3_env.put_bytes("fine-tuning-zone", "manifests/built_from/baseline_results.json", b"{not json")
    request, _ = _tick(None)
    assert isinstance(request, dg.RunRequest)


def test_a_photo_replaced_with_the_same_size_and_mtime_is_a_change_on_the_local_lake(tmp_path, monkeypatch):
    import os

    from clipfood_assets.lake import LocalLake

    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    monkeypatch.setenv("CLIPFOOD_LAKE_DIR", str(tmp_path / "lake"))
    lake = LocalLake(tmp_path / "lake")
    _zone(lake)
    first, cursor = _tick(None)
    assert isinstance(first, dg.RunRequest)
    unchanged, cursor = _tick(cursor)
    assert "unchanged" in unchanged

    # Re-saved with another EXIF orientation: same size, and the mtime put back (cp -p, rsync -t, tar -x).
    photo = lake.root / TRUSTED_ZONE / "images/soup__aaaaaaaaaa_0.jpg"
    old = photo.stat()
    photo.write_bytes(b"jpeg-6")
    os.utime(photo, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (photo.stat().st_size, photo.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    request, cursor = _tick(cursor)
    assert isinstance(request, dg.RunRequest) and request.run_key != first.run_key
    again, _ = _tick(cursor)
    assert "unchanged" in again
