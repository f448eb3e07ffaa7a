"""The trusted-zone sensor at 10,000 to 1,000,000 objects: bounded ticks, passes, changes noticed.

For each zone size N it writes a zone at scale (`clipfood synth --scale`'s writer: N/k recipes with
k photos each, a few reused 64 px JPEGs under distinct keys and ETags), then drives the real
Dagster sensor (`trusted_zone_sensor`, default budget: CLIPFOOD_SENSOR_OBJECTS_PER_TICK 200,000,
CLIPFOOD_SENSOR_SECONDS_PER_TICK 3) tick after tick, as the daemon would, and measures:

  * first pass: ticks until the first complete pass requests the first refresh; its version is
    checked against `fingerprint_trusted_zone` (one listing of the whole zone, timed: the reference);
  * nothing changed: one whole pass of ticks, tick time (median, max) and ticks per pass P;
  * 0.1 % changed (N/1,000 photos rewritten, spread over the zone, before a pass starts): ticks
    until the refresh is requested (at most P: the pass sees them all);
  * one photo changed just behind the pass: ticks until noticed (the worst case, at most 2P, where
    P = ceil(N / min(objects per tick, rate x seconds per tick / 2)) at the slowest rate a tick of
    the unchanged pass listed at: a tick lists half its budget at least after its first object);
  * with bucket notifications (S3 only: moto's S3 -> SQS): ticks until a changed photo is noticed;
  * resume floor: the time to the first object of a listing resumed mid-zone (a local folder is
    scanned whole each time; S3 answers one page);
  * peak RSS of each phase (reset through /proc/self/clear_refs) with its rise over the phase's start.

It prints one table, the growth per 10x of the zone (cost(10N) / (10 cost(N)): 1.0 = linear,
0.1 = constant) and an extrapolation to Recipe1M+'s 13 million photos with its model.

The local lake runs in --tmp-dir (use /dev/shm: 1,000,000 files). The S3 zones live in a moto server in
a child process: zones of up to --s3-http-max objects are written over HTTP by the synth writer, larger
ones straight into moto's backend (moto lists ~3,000 objects/s and answers one ListObjectsV2 page in
time proportional to the whole bucket, so 1,000,000 objects there is out of reach).

    python benchmarks/bench_scale.py [--sizes 10000,100000,1000000] [--s3-sizes 10000,100000]
                                     [--photos 4] [--tmp-dir /dev/shm] [--s3-http-max 10000]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_copy import ACCESS_KEY, SECRET_KEY, s3_lake, serve_moto_until_stdin_closes, start_moto
from bench_sensor import peak_rss_mb, reset_peak_rss, rss_mb

from clipfood_assets.cli import write_scale_zone
from clipfood_assets.lake import LocalLake
from clipfood_assets.lake.fingerprint import fingerprint_trusted_zone
from clipfood_assets.lake.layout import RECIPES_KEY, TRUSTED_IMAGES_PREFIX, TRUSTED_ZONE
from clipfood_assets.lake.provenance import REFRESHED_ARTIFACTS, record_built_from
from clipfood_assets.settings import ClipfoodSettings
from clipfood_assets.synthetic import scale_trusted_zone, with_comment

RECIPE1M_PHOTOS = 13_000_000
TICK_TARGET_S = 5.0
INTERVAL_S = 60  # the sensor's minimum_interval_seconds
MOTO_ACCOUNT, MOTO_PARTITION = "123456789012", "aws"
LISTED = re.compile(r"([\d,]+) listed this tick in ([\d.]+) s")  # the tick's own report


# --------------------------------------------------------------------------- the sensor, ticked


class Ticker:
    """The real sensor evaluated again and again with its cursor, as the daemon does."""

    def __init__(self):
        import dagster as dg

        self.dg = dg
        self.cursor = None
        self.instance = dg.DagsterInstance.ephemeral()

    def tick(self) -> tuple[object, float, str]:
        """(run request or None, seconds, message)."""
        from clipfood_assets.defs.resources import LakeResource
        from clipfood_assets.defs.trusted_zone.sensors import trusted_zone_sensor

        dg = self.dg
        context = dg.build_sensor_context(cursor=self.cursor, instance=self.instance,
                                          resources={"lake": LakeResource()})
        start = time.perf_counter()
        result = trusted_zone_sensor(context)
        seconds = time.perf_counter() - start
        self.cursor = context.cursor
        if isinstance(result, dg.SkipReason):
            return None, seconds, result.skip_message
        if result.run_requests:
            return result.run_requests[0], seconds, ""
        return None, seconds, result.skip_reason.skip_message

    def until_request(self, limit: int) -> tuple[object, list[float]]:
        times = []
        for _ in range(limit):
            request, seconds, _ = self.tick()
            times.append(seconds)
            if request is not None:
                return request, times
        raise RuntimeError(f"no refresh requested in {limit} ticks")


@dataclass
class Phase:
    ticks: int
    times: list[float]
    peak_rss: float
    rss_rise: float

    @property
    def median(self) -> float:
        return statistics.median(self.times)


@dataclass
class Result:
    backend: str
    n: int
    write_s: float
    listing_s: float  # fingerprint_trusted_zone: one listing of the whole zone
    resume_floor_s: float
    phases: dict[str, Phase] = field(default_factory=dict)
    listing_ticks: list[tuple[int, float]] = field(default_factory=list)  # (objects, seconds) a tick listed

    @property
    def per_pass(self) -> int:
        return self.phases["unchanged"].ticks

    @property
    def rate(self) -> float:
        """The slowest listing rate of the unchanged pass's ticks (objects a second after the resume floor);
        the pass's last tick, which stops at the end of the zone, only when it is the one tick."""
        ticks = self.listing_ticks[:-1] or self.listing_ticks
        return min(objects / max(1e-3, seconds - self.resume_floor_s) for objects, seconds in ticks)

    @property
    def pass_bound(self) -> int:
        """P: a tick lists at least half its budget after its first object, so a pass takes at most
        ceil(N / min(objects a tick, rate x budget / 2)) ticks at this rate."""
        settings = ClipfoodSettings.from_env()
        per_tick = min(settings.sensor_objects_per_tick, self.rate * settings.sensor_seconds_per_tick / 2)
        return math.ceil(self.n / per_tick)


def _phase(fn) -> tuple[object, Phase]:
    reset_peak_rss()
    before = rss_mb()
    out, times = fn()
    return out, Phase(len(times), times, peak_rss_mb(), peak_rss_mb() - before)


def built(lake, version: str) -> None:
    """What a successful refresh leaves in the lake: the data zone and the baseline built from ``version``."""
    for artifact in REFRESHED_ARTIFACTS:
        record_built_from(lake, artifact, version)


def scale_keys(n_recipes: int, photos: int, every: int) -> list[tuple[str, bytes]]:
    """Every ``every``-th photo of the zone (keys and bytes), from the generator: no listing needed."""
    _, images = scale_trusted_zone(n_recipes, photos)
    return [item for i, item in enumerate(images) if i % every == every // 2]


def drive_sensor(lake, backend: str, n: int, n_recipes: int, photos: int, write_s: float,
                 notifications=None) -> Result:
    """Every phase of the sensor over a zone of ``n`` photos (the environment already points at it)."""
    from clipfood_assets.defs.trusted_zone.sensors import VERSION_TAG

    limit = 10 * math.ceil(n / 1000) + 20  # ticks: a pass lists at least one page a tick
    sensor = Ticker()
    first, first_phase = _phase(lambda: sensor.until_request(limit))
    start = time.perf_counter()
    reference = fingerprint_trusted_zone(lake)
    listing_s = time.perf_counter() - start
    assert first.tags[VERSION_TAG] == reference.version, "a completed pass must give fingerprint_trusted_zone's version"
    assert reference.n_images == n, reference
    built(lake, reference.version)

    def unchanged():
        times, listed = [], []
        while True:
            request, seconds, message = sensor.tick()
            assert request is None and "nothing to do" in message, message
            times.append(seconds)
            objects, listing_s = LISTED.search(message).groups()
            listed.append((int(objects.replace(",", "")), float(listing_s)))
            if "pass complete" in message:
                return listed, times

    listing_ticks, unchanged_phase = _phase(unchanged)

    def changed(items):
        for key, data in items:
            lake.put_bytes(TRUSTED_ZONE, key, with_comment(data, b"changed"), "image/jpeg")
        return sensor.until_request(limit)

    spread = scale_keys(n_recipes, photos, 1000)  # 0.1 %
    request, spread_phase = _phase(lambda: changed(spread))
    built(lake, request.tags[VERSION_TAG])

    # The worst case: the pass has just gone past the photo that changes (ticks counted from the change).
    request, _, message = sensor.tick()
    assert request is None and "nothing to do" in message, message
    first_photo = [next(scale_trusted_zone(n_recipes, photos)[1])]  # the earliest timestamp: first in key order
    request, behind_phase = _phase(lambda: changed(first_photo))
    built(lake, request.tags[VERSION_TAG])

    result = Result(backend, n, write_s, listing_s, resume_floor(lake, first_photo[0][0]),
                    {"first": first_phase, "unchanged": unchanged_phase, "spread": spread_phase,
                     "behind": behind_phase}, listing_ticks)
    if notifications is not None:
        os.environ["CLIPFOOD_SENSOR_SQS_URL"] = notifications()
        try:
            sensor.tick()  # reads the queue's test event
            request, notified_phase = _phase(lambda: changed(first_photo))
            result.phases["notified"] = notified_phase
        finally:
            del os.environ["CLIPFOOD_SENSOR_SQS_URL"]
    return result


def resume_floor(lake, after: str, repeats: int = 3) -> float:
    """Seconds to the first object of a listing resumed after ``after`` (median of 3): what every tick pays
    before it lists anything (the local lake scans the images folder whole, wherever it resumes; S3 answers
    one page)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        next(lake.list(TRUSTED_ZONE, TRUSTED_IMAGES_PREFIX, start_after=after, limit=1))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------- the zones


def bench_local(n: int, photos: int, tmp_dir: str | None) -> Result:
    n_recipes = n // photos
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=tmp_dir) as tmp:
        root = Path(tmp) / "lake"
        os.environ.pop("MINIO_ENDPOINT", None)
        os.environ["CLIPFOOD_LAKE_DIR"] = str(root)
        lake = LocalLake(root)
        start = time.perf_counter()
        write_scale_zone(lake, n_recipes, photos, seed=0, workers=2)
        write_s = time.perf_counter() - start
        print(f"  local lake {root}: {n:,} photos written in {write_s:.1f} s ({n / write_s:,.0f}/s)", flush=True)
        # A real zone's files are older than the local lake's 2 s racy window (newer ones are hashed at every
        # listing): wait it out, as a settled zone would be.
        time.sleep(2.5)
        return drive_sensor(lake, "local", n, n_recipes, photos, write_s)


def populate_moto_backend(n_recipes: int, photos: int) -> None:
    """Child side: the zone straight into moto's in-memory backend (no HTTP, no notifications)."""
    from moto.s3.models import s3_backends

    backend = s3_backends[MOTO_ACCOUNT][MOTO_PARTITION]
    backend.create_bucket(TRUSTED_ZONE, "us-east-1")
    lines, images = scale_trusted_zone(n_recipes, photos)
    for key, data in images:
        backend.put_object(TRUSTED_ZONE, key, data, disable_notification=True)
    backend.put_object(TRUSTED_ZONE, RECIPES_KEY, b"".join(lines), disable_notification=True)


def bench_s3(n: int, photos: int, http_max: int) -> Result:
    import boto3

    n_recipes = n // photos
    over_http = n <= http_max
    start = time.perf_counter()
    child = [os.path.abspath(__file__), "--serve-moto"] + ([] if over_http else [str(n_recipes), str(photos)])
    server = start_moto(child_args=child)
    try:
        lake = s3_lake(server.endpoint)
        if over_http:
            write_scale_zone(lake, n_recipes, photos, seed=0, workers=8)
        write_s = time.perf_counter() - start
        how = "over HTTP by the synth writer" if over_http else "straight into moto's backend"
        print(f"  moto S3 {server.endpoint}: {n:,} photos written {how} in {write_s:.1f} s ({n / write_s:,.0f}/s)",
              flush=True)
        os.environ.update({"MINIO_ENDPOINT": server.endpoint, "MINIO_ACCESS_KEY": ACCESS_KEY,
                           "MINIO_SECRET_KEY": SECRET_KEY})

        def notifications() -> str:
            client = {"endpoint_url": f"http://{server.endpoint}", "region_name": "us-east-1",
                      "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY}
            sqs = boto3.client("sqs", **client)
            queue = sqs.create_queue(QueueName="trusted-zone-events")["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            boto3.client("s3", **client).put_bucket_notification_configuration(
                Bucket=TRUSTED_ZONE, NotificationConfiguration={"QueueConfigurations": [
                    {"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})
            return queue

        return drive_sensor(lake, "moto S3", n, n_recipes, photos, write_s, notifications)
    finally:
        server.stop()
        for name in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"):
            os.environ.pop(name, None)


# --------------------------------------------------------------------------- report


def table(results: list[Result]) -> None:
    print()
    print("| lake | objects | full listing (reference) | resume floor | tick, nothing changed: median / max "
          "| ticks per pass (bound P) | 0.1 % changed: ticks to notice (tick median) | changed behind the pass: "
          "ticks (bound 2P) | notified: ticks (tick) | peak RSS / rise over phase start (unchanged pass) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        u, s, b = r.phases["unchanged"], r.phases["spread"], r.phases["behind"]
        notified = r.phases.get("notified")
        verdict = "under" if max(u.times) < TICK_TARGET_S else "OVER"
        print(f"| {r.backend} | {r.n:,} | {r.listing_s:.1f} s ({r.n / r.listing_s:,.0f}/s) | {r.resume_floor_s:.2f} s "
              f"| {u.median:.2f} / {max(u.times):.2f} s ({verdict} {TICK_TARGET_S:.0f} s) | {r.per_pass} "
              f"(≤ {r.pass_bound}) | {s.ticks} ({s.median:.2f} s) | {b.ticks} (≤ {2 * r.pass_bound}) "
              f"| {f'{notified.ticks} ({notified.median:.2f} s)' if notified else 'n/a'} "
              f"| {u.peak_rss:.0f} MB / +{max(u.rss_rise, 0):.1f} MB |")


def growth(results: list[Result]) -> None:
    print()
    print("Growth per 10x of the zone, cost(10N) / (10 cost(N)): 1.0 = linear, 0.1 = constant")
    metrics = {
        "full listing s": lambda r: r.listing_s,
        "tick median s (nothing changed)": lambda r: r.phases["unchanged"].median,
        "resume floor s": lambda r: r.resume_floor_s,
        "ticks per pass": lambda r: r.per_pass,
        "peak RSS MB": lambda r: r.phases["unchanged"].peak_rss,
    }
    for backend in dict.fromkeys(r.backend for r in results):
        rows = sorted((r for r in results if r.backend == backend), key=lambda r: r.n)
        for small, big in itertools.pairwise(rows):
            if big.n != 10 * small.n:
                continue
            parts = [f"{name} {fn(big) / (10 * fn(small)):.2f}" for name, fn in metrics.items()]
            print(f"  {backend} {small.n:,} -> {big.n:,}: " + "; ".join(parts))


def extrapolate(results: list[Result]) -> None:
    settings = ClipfoodSettings.from_env()
    budget, limit = settings.sensor_seconds_per_tick, settings.sensor_objects_per_tick
    print()
    print(f"Extrapolation to Recipe1M+ ({RECIPE1M_PHOTOS:,} photos) from each lake's largest zone. Model: a tick "
          f"pays a resume floor F before its first object (local lake: one scan of the images folder, linear in N; "
          f"S3: one page, constant on MinIO and AWS, growing on moto), then lists for max(T - F, T / 2) s (T = "
          f"{budget:.0f} s) at the streaming rate R measured in its ticks, at most {limit:,} objects; the rest of "
          f"the tick (stats, run records) is the measured overhead; a pass takes P = ceil(N / objects a tick) "
          f"ticks, {INTERVAL_S} s apart; a change is noticed within 2P ticks by listing, 1 with notifications.")
    for backend in dict.fromkeys(r.backend for r in results):
        r = max((r for r in results if r.backend == backend), key=lambda r: r.n)
        listed = sum(objects for objects, _ in r.listing_ticks)
        streaming = sum(max(1e-3, seconds - r.resume_floor_s) for _, seconds in r.listing_ticks)
        rate = listed / streaming
        overhead = max(0.0, r.phases["unchanged"].median - statistics.median(s for _, s in r.listing_ticks))
        floor = r.resume_floor_s * (RECIPE1M_PHOTOS / r.n if backend == "local" else 1.0)
        listing = max(budget - floor, budget / 2)
        per_tick = min(limit, rate * listing)
        tick = floor + min(listing, per_tick / rate) + overhead
        passes = math.ceil(RECIPE1M_PHOTOS / per_tick)
        print(f"  {backend} (from {r.n:,}): R {rate:,.0f} obj/s, F {floor:.2f} s, overhead {overhead:.2f} s -> tick "
              f"{tick:.1f} s ({'under' if tick < TICK_TARGET_S else 'OVER'} {TICK_TARGET_S:.0f} s), {per_tick:,.0f} "
              f"objects a tick, P = {passes:,} ticks ({passes * INTERVAL_S / 3600:,.1f} h a pass); a change noticed "
              f"within {2 * passes:,} ticks ({2 * passes * INTERVAL_S / 3600:,.1f} h) by listing"
              + ("; in 1 tick with notifications" if backend != "local" else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="local lake zone sizes (photos)")
    parser.add_argument("--s3-sizes", default="10000,100000", help="moto S3 zone sizes (photos); empty: none")
    parser.add_argument("--photos", type=int, default=4, help="photos per recipe")
    parser.add_argument("--tmp-dir", help="where the local lakes are written (default: the system temp dir)")
    parser.add_argument("--s3-http-max", type=int, default=10_000,
                        help="S3 zones up to this size are written over HTTP by the synth writer")
    parser.add_argument("--serve-moto", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_moto is not None:
        fill = (lambda: populate_moto_backend(*map(int, args.serve_moto))) if args.serve_moto else None
        serve_moto_until_stdin_closes(fill)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    s3_sizes = [int(s) for s in args.s3_sizes.split(",") if s]
    print(f"trusted-zone sensor at scale: {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), "
          f"{args.photos} photos per recipe, peak RSS {'per phase' if reset_peak_rss() else 'cumulative'}",
          flush=True)
    results = []
    for n in s3_sizes:
        results.append(bench_s3(n, args.photos, args.s3_http_max))
        table(results[-1:])
    for n in sizes:
        results.append(bench_local(n, args.photos, args.tmp_dir))
        table(results[-1:])
    table(results)
    growth(results)
    extrapolate(results)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
