"""Trusted-zone sensor on a 100,000-object zone: listing + fingerprint under 30 s, flat memory.

The sensor lists the whole trusted zone (streamed, page by page) and hashes every key and
ETag. This script builds a trusted zone of N objects twice:

  * in a moto S3 server (child process), filled through moto's in-process backend directly
    (100k PUTs over HTTP would take minutes), then fingerprinted over HTTP by S3Lake;
  * as N small files under a LocalLake, whose ETag is an md5 of the bytes: the first fingerprint
    in a process reads every file, later ones only stat them (digests known by inode, size, mtime
    and ctime); both are printed.

For each it prints seconds, objects/s and peak RSS of this process next to a reference
measured on the same zone in the same run (the bare client listing for S3, a bare
os.scandir + stat for the local lake), and the 30 s target. Finally it ticks the real Dagster
sensor (`trusted_zone_sensor`, whose passes go on across ticks of bounded work) against the S3
server: its first pass until it requests a refresh (RunRequest), then an unchanged pass
(SkipReason). benchmarks/bench_scale.py measures the sensor from 10,000 to 1,000,000 objects.

Peak RSS is per phase (reset through /proc/self/clear_refs where the kernel allows it), with
its rise over the RSS at the start of the phase: a streamed listing keeps that rise flat.

    python benchmarks/bench_sensor.py [--objects 100000] [--repeats 3] [--s3-repeats 1]
                                      [--skip-s3] [--skip-local] [--skip-dagster] [--tmp-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_copy import ACCESS_KEY, SECRET_KEY, s3_lake, serve_moto_until_stdin_closes, start_moto  # noqa: E402

from clipfood_assets.lake import LocalLake  # noqa: E402
from clipfood_assets.lake.fingerprint import fingerprint_trusted_zone  # noqa: E402
from clipfood_assets.lake.layout import RECIPES_KEY, TRUSTED_IMAGES_PREFIX, TRUSTED_ZONE  # noqa: E402

TARGET_S = 30.0
MOTO_ACCOUNT, MOTO_PARTITION = "123456789012", "aws"


def zone_objects(n: int) -> list[tuple[str, bytes]]:
    """N trusted-zone image keys (``images/<slug>__<id>_<pos>.jpg``) with small distinct bodies."""
    return [
        (f"{TRUSTED_IMAGES_PREFIX}dish-{i:06d}__{(i * 2654435761) % (1 << 40):010x}_{1 + i % 4}.jpg",
         b"\xff\xd8\xff\xe0" + i.to_bytes(8, "big") * 8)
        for i in range(n)
    ]


def populate_moto_backend(n: int) -> None:
    """Child side: write the zone straight into moto's in-memory backend (no HTTP)."""
    from moto.s3.models import s3_backends

    backend = s3_backends[MOTO_ACCOUNT][MOTO_PARTITION]
    backend.create_bucket(TRUSTED_ZONE, "us-east-1")
    recipes = b'{"id": "r1", "title_text_raw": "Soup"}\n'
    backend.put_object(TRUSTED_ZONE, RECIPES_KEY, recipes, disable_notification=True)
    for key, body in zone_objects(n):
        backend.put_object(TRUSTED_ZONE, key, body, disable_notification=True)


def populate_local(root: Path, n: int) -> None:
    images = root / TRUSTED_ZONE / TRUSTED_IMAGES_PREFIX
    images.mkdir(parents=True)
    (root / TRUSTED_ZONE / RECIPES_KEY).parent.mkdir(parents=True)
    (root / TRUSTED_ZONE / RECIPES_KEY).write_bytes(b'{"id": "r1", "title_text_raw": "Soup"}\n')
    for key, body in zone_objects(n):
        (root / TRUSTED_ZONE / key).write_bytes(body)


# --------------------------------------------------------------------------- measurement


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0) so each phase reports its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class Phase:
    seconds: float  # median wall time
    cpu_seconds: float  # median CPU time of this process (the client's own share of the work)
    peak_rss: float  # MB
    rss_rise: float  # MB over the RSS at the start of the phase
    result: object


def measure(fn: Callable[[], object], repeats: int) -> Phase:
    reset_peak_rss()
    before = rss_mb()
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    peak = peak_rss_mb()
    return Phase(statistics.median(walls), statistics.median(cpus), peak, peak - before, result)


def row(label: str, n: int, phase: Phase, target: bool = True) -> None:
    verdict = ("meets" if phase.seconds < TARGET_S else "MISSES") + f" the {TARGET_S:.0f} s target" if target else ""
    print(f"  {label:44s} {phase.seconds:7.2f} s {n / phase.seconds:8.0f} obj/s  client CPU {phase.cpu_seconds:6.2f} s"
          f"  peak RSS {phase.peak_rss:4.0f} MB (+{max(phase.rss_rise, 0):4.1f})  {verdict}")


def count_minio_listing(client) -> int:
    """Reference: the bare minio client paging through the same zone (no ObjectInfo, no hashing)."""
    return sum(1 for _ in client.list_objects(TRUSTED_ZONE, prefix=TRUSTED_IMAGES_PREFIX, recursive=True))


def count_scandir(root: Path) -> int:
    """Reference: a bare sorted scandir + stat of the images folder."""
    entries = sorted(os.scandir(root / TRUSTED_ZONE / TRUSTED_IMAGES_PREFIX), key=lambda e: e.name)
    return sum(1 for e in entries if e.stat().st_size >= 0)


# --------------------------------------------------------------------------- phases


def bench_s3(n: int, repeats: int, dagster: bool) -> None:
    """moto answers one ListObjectsV2 page in time proportional to the whole bucket, so a
    100k-object pass takes about a minute there: hence a separate, smaller repeat count."""
    start = time.perf_counter()
    server = start_moto(child_args=[os.path.abspath(__file__), "--serve-moto", "--objects", str(n)])
    print(f"S3 (moto, child process at {server.endpoint}): {n} objects put straight into moto's backend "
          f"in {time.perf_counter() - start:.1f} s")
    try:
        from minio import Minio

        lake = s3_lake(server.endpoint)
        client = Minio(server.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False)
        # Warm both clients (bucket-location lookup, connection pool) so neither pays it in the timing.
        list(lake.list(TRUSTED_ZONE, "documents/"))
        list(client.list_objects(TRUSTED_ZONE, prefix="documents/", recursive=True))
        reference = measure(lambda: count_minio_listing(client), repeats)
        assert reference.result == n, reference.result
        sensor = measure(lambda: fingerprint_trusted_zone(lake), repeats)
        assert sensor.result.n_images == n, sensor.result
        row("reference: bare minio list_objects", n, reference, target=False)
        row("fingerprint_trusted_zone(S3Lake)", n, sensor)
        print(f"  fingerprint / bare listing: {sensor.seconds / reference.seconds:.2f}x wall; the client's CPU is "
              f"{sensor.cpu_seconds:.1f} s of {sensor.seconds:.1f} s, the rest is the server answering "
              f"{-(-n // 1000)} ListObjectsV2 pages (moto scans and sorts the whole bucket for every page)")
        if dagster:
            bench_dagster_sensor(server.env(), n, sensor.result.version)
    finally:
        server.stop()


def bench_dagster_sensor(env: dict[str, str], n: int, version: str) -> None:
    """The Dagster sensor's bounded ticks over the same zone: its first pass (ticks until the refresh is
    requested, with the version of the one-go fingerprint above), then an unchanged pass."""
    import dagster as dg

    from clipfood_assets.defs.resources import LakeResource
    from clipfood_assets.defs.trusted_zone.sensors import VERSION_TAG, trusted_zone_sensor

    os.environ.update(env)
    instance, cursor = dg.DagsterInstance.ephemeral(), None

    def tick():
        nonlocal cursor
        context = dg.build_sensor_context(cursor=cursor, instance=instance, resources={"lake": LakeResource()})
        result = trusted_zone_sensor(context)
        cursor = context.cursor
        return result

    def first_pass():
        ticks = []
        while True:
            ticks.append(measure(tick, 1))
            result = ticks[-1].result
            if isinstance(result, dg.SensorResult) and result.run_requests:
                assert result.run_requests[0].tags[VERSION_TAG] == version, result.run_requests[0].tags
                return ticks

    def unchanged_pass():
        ticks = []
        while not ticks or "pass complete" not in ticks[-1].result.skip_reason.skip_message:
            ticks.append(measure(tick, 1))
            assert not ticks[-1].result.run_requests
        return ticks

    print("Dagster trusted_zone_sensor (S3 via LakeResource, env MINIO_ENDPOINT), ticked with its cursor:")
    passes = [("first pass -> RunRequest", first_pass()), ("unchanged pass -> SkipReason", unchanged_pass())]
    for label, ticks in passes:
        slowest = max(ticks, key=lambda phase: phase.seconds)
        print(f"  {label:32s} {len(ticks):4d} ticks, {sum(t.seconds for t in ticks):7.2f} s in all, slowest tick "
              f"{slowest.seconds:5.2f} s, peak RSS {max(t.peak_rss for t in ticks):4.0f} MB")


def bench_local(n: int, repeats: int, tmp_dir: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-sensor-", dir=tmp_dir) as tmp:
        root = Path(tmp) / "lake"
        start = time.perf_counter()
        populate_local(root, n)
        written = time.perf_counter()
        print(f"LocalLake ({root}): {n} files written in {written - start:.1f} s")
        lake = LocalLake(root)
        reference = measure(lambda: count_scandir(root), repeats)
        assert reference.result == n, reference.result
        # A real zone's files are older than the local lake's 2 s racy window (a file changed more
        # recently is hashed again at every listing): wait it out, as a settled zone would be.
        time.sleep(max(0.0, 2.5 - (time.perf_counter() - written)))
        first = measure(lambda: fingerprint_trusted_zone(lake), 1)
        sensor = measure(lambda: fingerprint_trusted_zone(lake), repeats)
        assert first.result == sensor.result and sensor.result.n_images == n, sensor.result
        row("reference: bare sorted os.scandir + stat", n, reference, target=False)
        row("first fingerprint (md5 of every file)", n, first)
        row("fingerprint_trusted_zone(LocalLake)", n, sensor)
        print(f"  fingerprint / bare scandir: {sensor.seconds / reference.seconds:.2f}x; "
              f"first / later: {first.seconds / sensor.seconds:.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3, help="repeats for the local lake")
    parser.add_argument("--s3-repeats", type=int, default=1, help="repeats over S3 (a minute each on moto at 100k)")
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--skip-dagster", action="store_true")
    parser.add_argument("--tmp-dir", help="where the local lake is written (default: the system temp dir)")
    parser.add_argument("--serve-moto", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_moto:
        serve_moto_until_stdin_closes(lambda: populate_moto_backend(args.objects))
        return
    per_phase = reset_peak_rss()
    print(f"{args.objects} objects, median of {args.repeats} (local) / {args.s3_repeats} (S3), "
          f"{os.cpu_count()} CPUs; peak RSS "
          + ("per phase" if per_phase else "cumulative (cannot reset it here)"))
    if not args.skip_s3:
        bench_s3(args.objects, args.s3_repeats, not args.skip_dagster)
    if not args.skip_local:
        bench_local(args.objects, args.repeats, args.tmp_dir)


if __name__ == "__main__":
    main()
