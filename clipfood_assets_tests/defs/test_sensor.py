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


def _tick(cursor):
    instance = dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(cursor=cursor, instance=instance, resources={"lake": LakeResource()})
    result = trusted_zone_sensor(context)
    return result, context.cursor


def test_sensor_requests_one_run_per_change_and_skips_otherwise(s3_env):
    lake = s3_env
    result, cursor = _tick(None)
    assert isinstance(result, dg.SkipReason)  # empty zone: nothing to build from

    lake.put_bytes(TRUSTED_ZONE, "images/soup__aaaaaaaaaa_0.jpg", b"jpeg-1")
    lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, b'{"id": "aaaaaaaaaa", "title_text_raw": "Tomato Soup"}\n')
    first, cursor = _tick(cursor)
    assert isinstance(first, dg.RunRequest)

    unchanged, cursor_after = _tick(cursor)
    assert isinstance(unchanged, dg.SkipReason) and cursor_after == cursor

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
        assert isinstance(again, dg.SkipReason)
    # The cursor stays compact whatever the zone size: a fingerprint, not a listing.
    assert len(cursor) < 300 and json.loads(cursor)["n_images"] == 1


def test_sensor_targets_the_data_zone_and_baseline():
    from clipfood_assets.defs.definitions import build_definitions

    defs = build_definitions()
    job = defs.resolve_job_def(trusted_zone_sensor.job_name)
    selected = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert {"train_pairs_positive", "test_pairs_positive", "pairing_quarantine", "fine_tuning_images",
            "augmented_training_pairs", "baseline_results"} <= selected
    assert "lora_adapters" not in selected  # runs are re-trained only when asked
    assert trusted_zone_sensor.default_status == dg.DefaultSensorStatus.RUNNING
