"""The trusted-zone sensor's bounded ticks: a pass over the images goes on across ticks, gives the version
the data zone records, and notices a change within two passes; bucket notifications (moto's S3 -> SQS)
make it the next tick."""

from __future__ import annotations

import json

import boto3
import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from clipfood_assets.defs.resources import LakeResource
from clipfood_assets.defs.trusted_zone import sensors
from clipfood_assets.defs.trusted_zone.sensors import trusted_zone_sensor
from clipfood_assets.lake import LocalLake
from clipfood_assets.lake.fingerprint import fingerprint_trusted_zone
from clipfood_assets.lake.layout import RECIPES_KEY, TRUSTED_ZONE
from clipfood_assets.lake.provenance import REFRESHED_ARTIFACTS, record_built_from

PER_TICK = 4
N_IMAGES = 11  # passes of 3 ticks: 4 + 4 + 3 objects


def _key(i: int) -> str:
    return f"images/dish-{i:02d}__{i:010x}_0.jpg"


def _fill(lake, n=N_IMAGES):
    for i in range(n):
        lake.put_bytes(TRUSTED_ZONE, _key(i), f"jpeg-{i}".encode())
    lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, b'{"id": "0000000001", "title_text_raw": "Soup"}\n')


@pytest.fixture(params=["local", "s3"])
def zone(request, monkeypatch, tmp_path):
    """A lake the sensor's LakeResource opens (from the environment), filled with N_IMAGES photos."""
    monkeypatch.setenv("CLIPFOOD_SENSOR_OBJECTS_PER_TICK", str(PER_TICK))
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        lake = request.getfixturevalue("s3_lake")
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
    else:
        monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
        monkeypatch.setenv("CLIPFOOD_LAKE_DIR", str(tmp_path / "lake"))
        lake = LocalLake(tmp_path / "lake")
    _fill(lake)
    return lake


class Sensor:
    """Ticks with the cursor carried over, as the daemon does."""

    def __init__(self):
        self.cursor = None
        self.instance = dg.DagsterInstance.ephemeral()
        self.sizes = []

    def tick(self):
        context = dg.build_sensor_context(cursor=self.cursor, instance=self.instance,
                                          resources={"lake": LakeResource()})
        result = trusted_zone_sensor(context)
        self.cursor = context.cursor
        self.sizes.append(len(self.cursor or ""))
        if isinstance(result, dg.SensorResult) and result.run_requests:
            return result.run_requests[0]
        return result.skip_message if isinstance(result, dg.SkipReason) else result.skip_reason.skip_message

    def until_request(self, limit=20) -> tuple[dg.RunRequest, int]:
        for n in range(1, limit + 1):
            result = self.tick()
            if isinstance(result, dg.RunRequest):
                return result, n
        raise AssertionError(f"no run requested in {limit} ticks; last: {result}")

    def add_run(self, request, status):
        run = DagsterRun(job_name="refresh_from_trusted_zone", tags=request.tags, status=status)
        self.instance.add_run(run)
        return run


def _built(lake, version=None):
    """What a refresh leaves: the data zone and the baseline built from the zone as it is now."""
    for artifact in REFRESHED_ARTIFACTS:
        record_built_from(lake, artifact, version or fingerprint_trusted_zone(lake).version)


def test_a_pass_across_ticks_ends_with_the_version_the_data_zone_records(zone):
    sensor = Sensor()
    first = [sensor.tick(), sensor.tick()]
    assert all("first pass" in m for m in first)
    assert "(4 objects so far; 4 listed this tick" in first[0] and "(8 objects so far; 4 listed" in first[1]
    request = sensor.tick()
    assert isinstance(request, dg.RunRequest), request
    assert request.tags[sensors.VERSION_TAG] == fingerprint_trusted_zone(zone).version
    assert request.tags["clipfood/images"] == str(N_IMAGES)
    assert max(sensor.sizes) < 1000  # a key and a few digests, whatever the zone's size
    _built(zone)
    report = [sensor.tick() for _ in range(3)]
    assert all("nothing to do" in m for m in report)
    assert "pass 36 % (4 objects" in report[0] and "pass 72 % (8 objects" in report[1]
    assert "pass complete (11 objects" in report[2]


def test_a_changed_photo_is_noticed_within_two_passes(zone):
    sensor = Sensor()
    sensor.until_request()
    _built(zone)
    assert "nothing to do" in sensor.tick()  # the next pass has listed images 0-3
    zone.put_bytes(TRUSTED_ZONE, _key(1), b"re-saved")  # behind the pass: the next pass sees it
    request, ticks = sensor.until_request()
    assert ticks == 2 + 3 and "images changed" in request.tags["clipfood/trusted_zone_change"]
    assert request.tags[sensors.VERSION_TAG] == fingerprint_trusted_zone(zone).version
    _built(zone)
    assert "nothing to do" in sensor.tick()
    zone.put_bytes(TRUSTED_ZONE, _key(9), b"re-saved")  # ahead of the pass: this pass sees it
    _, ticks = sensor.until_request()
    assert ticks == 2


def test_a_recipes_change_is_noticed_in_the_next_tick_mid_pass(zone):
    sensor = Sensor()
    sensor.until_request()
    _built(zone)
    assert "pass 36 %" in sensor.tick()
    zone.put_bytes(TRUSTED_ZONE, RECIPES_KEY, b'{"id": "0000000001", "title_text_raw": "Pea Soup"}\n')
    request = sensor.tick()
    assert isinstance(request, dg.RunRequest)
    assert "recipes.jsonl changed" in request.tags["clipfood/trusted_zone_change"]
    assert request.tags[sensors.VERSION_TAG] == fingerprint_trusted_zone(zone).version


def test_a_refresh_under_way_holds_the_next_one_until_it_ends(zone, monkeypatch):
    monkeypatch.setenv("CLIPFOOD_SENSOR_OBJECTS_PER_TICK", "1000")
    sensor = Sensor()
    first = sensor.tick()
    run = sensor.add_run(first, dg.DagsterRunStatus.STARTED)
    zone.put_bytes(TRUSTED_ZONE, _key(0), b"changed while the refresh runs")
    assert "under way" in sensor.tick() and "under way" in sensor.tick()
    sensor.instance.report_run_failed(run)
    second = sensor.tick()
    assert isinstance(second, dg.RunRequest), second
    assert second.tags[sensors.VERSION_TAG] == fingerprint_trusted_zone(zone).version != first.tags[sensors.VERSION_TAG]


def test_a_cursor_of_the_whole_zone_format_starts_a_first_pass(zone, monkeypatch):
    monkeypatch.setenv("CLIPFOOD_SENSOR_OBJECTS_PER_TICK", "1000")
    sensor = Sensor()
    sensor.cursor = json.dumps({"recipes_etag": "x", "images_digest": "y", "n_images": 1, "images_bytes": 6,
                                "since": 1.0})
    request = sensor.tick()
    assert isinstance(request, dg.RunRequest) and request.tags["clipfood/trusted_zone_change"] == "first observation"


# --------------------------------------------------------------------------- bucket notifications


@pytest.fixture
def notified_zone(s3_server, s3_lake, monkeypatch):
    """The S3 zone with its bucket's notifications going to an SQS queue of the same moto server."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CLIPFOOD_SENSOR_OBJECTS_PER_TICK", str(PER_TICK))
    _fill(s3_lake)
    client = {"endpoint_url": s3_server.url, "region_name": "us-east-1", "aws_access_key_id": "testing",
              "aws_secret_access_key": "testing"}
    sqs = boto3.client("sqs", **client)
    queue = sqs.create_queue(QueueName="trusted-zone-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    boto3.client("s3", **client).put_bucket_notification_configuration(
        Bucket=TRUSTED_ZONE, NotificationConfiguration={"QueueConfigurations": [
            {"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})
    monkeypatch.setenv("CLIPFOOD_SENSOR_SQS_URL", queue)
    return s3_lake, sqs, queue


def test_a_notified_change_is_acted_on_in_the_next_tick_and_the_pass_confirms_it(notified_zone):
    lake, _, _ = notified_zone
    sensor = Sensor()
    sensor.until_request()
    _built(lake)
    assert "nothing to do" in sensor.tick()  # the pass has gone past image 1
    lake.put_bytes(TRUSTED_ZONE, _key(1), b"re-saved")
    lake.delete(TRUSTED_ZONE, _key(2))
    request = sensor.tick()
    assert isinstance(request, dg.RunRequest), request
    assert request.tags["clipfood/trusted_zone_change"] == "2 image changes notified by the bucket"
    # The refresh runs and builds the zone as it is now; the pass under way, then a whole one, confirm it.
    sensor.add_run(request, dg.DagsterRunStatus.SUCCESS)
    _built(lake)
    after = [sensor.tick() for _ in range(5)]
    assert not [m for m in after if isinstance(m, dg.RunRequest)], after
    assert "refreshed after 2 notified changes" in after[0] and "no image changes notified" in after[0]
    assert "nothing to do" in after[-1]
    assert json.loads(sensor.cursor)["version"] == fingerprint_trusted_zone(lake).version


def test_a_lost_notification_is_caught_by_the_pass(notified_zone):
    lake, sqs, queue = notified_zone
    sensor = Sensor()
    sensor.until_request()
    _built(lake)
    assert "nothing to do" in sensor.tick()
    lake.put_bytes(TRUSTED_ZONE, _key(0), b"re-saved")
    sqs.purge_queue(QueueUrl=queue)
    request, ticks = sensor.until_request()
    assert ticks == 5 and "images changed" in request.tags["clipfood/trusted_zone_change"]


def test_an_unreachable_queue_leaves_the_listing_at_work(zone, monkeypatch):
    monkeypatch.setenv("CLIPFOOD_SENSOR_SQS_URL", "http://127.0.0.1:9/123456789012/gone")
    sensor = Sensor()
    reports = [sensor.tick(), sensor.tick()]
    assert all("notifications unavailable, listing only" in m for m in reports)
    request = sensor.tick()
    assert request.tags[sensors.VERSION_TAG] == fingerprint_trusted_zone(zone).version
