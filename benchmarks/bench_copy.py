"""Image copy trusted-zone -> fine-tuning-zone: server-side `copy_images` vs download+upload.

The original notebooks copied every image by downloading it and uploading it again, one at a time.
`copy_images` asks the server to copy (the bytes never reach this process), in parallel, and
skips images whose ETag already matches. This script times, on one S3 server (moto) with N
synthetic JPEG-sized objects:

  1. copy_images                     (server-side, parallel)
  2. download + upload, sequential   (the original notebooks' way)
  3. download + upload, parallel     (same thread count as 1)
  4. copy_images again               (idempotent re-run: everything skipped)

Medians over repeats (round-robin, destination cleared before each timed copy), images/s and
the ratios, all measured in this one run. The moto server runs in a child process by default,
so that its work (it does the copying) does not share this process's GIL, as a real MinIO
would not; ``--in-process`` runs it in a thread here instead.

    python benchmarks/bench_copy.py [--images 400] [--repeats 3] [--workers 16] [--in-process]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from clipfood_assets.data.prepare import copy_images
from clipfood_assets.lake import Lake, S3Lake
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, IMAGES_PREFIX, TRUSTED_ZONE

ACCESS_KEY = SECRET_KEY = "benchmark"  # moto accepts any credentials


# --------------------------------------------------------------------------- the S3 server


@dataclass
class MotoServer:
    """A moto S3 server on a random loopback port, in a child process or a thread of this one."""

    endpoint: str
    _stop: Callable[[], None]

    def stop(self) -> None:
        self._stop()

    def env(self) -> dict[str, str]:
        return {"MINIO_ENDPOINT": self.endpoint, "MINIO_ACCESS_KEY": ACCESS_KEY, "MINIO_SECRET_KEY": SECRET_KEY}


def quiet_werkzeug() -> None:
    # One access-log line per request would drown the figures (and cost time).
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def start_moto(in_process: bool = False, child_args: list[str] | None = None) -> MotoServer:
    """Start moto; a child runs ``python <child_args...>`` which must call `serve_moto_until_stdin_closes`."""
    if in_process:
        from moto.server import ThreadedMotoServer

        quiet_werkzeug()

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        return MotoServer(f"{host}:{port}", server.stop)
    args = child_args or [os.path.abspath(__file__), "--serve-moto"]
    proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.isdigit():
        proc.kill()
        raise RuntimeError(f"moto child did not report a port (got {line!r})")

    def stop() -> None:
        proc.stdin.close()  # the child stops its server when its stdin closes
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    return MotoServer(f"127.0.0.1:{line}", stop)


def serve_moto_until_stdin_closes(populate: Callable[[], None] | None = None) -> None:
    """Child side: optionally fill moto's in-process backend, serve, print the port, wait."""
    from moto.server import ThreadedMotoServer

    quiet_werkzeug()

    if populate is not None:
        populate()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)
    sys.stdin.read()
    server.stop()


def s3_lake(endpoint: str) -> S3Lake:
    return S3Lake(endpoint, ACCESS_KEY, SECRET_KEY, secure=False)


# --------------------------------------------------------------------------- data and copy methods


def fake_jpegs(n: int, seed: int = 42, low: int = 30_000, high: int = 60_000) -> list[tuple[str, bytes]]:
    """N (key, bytes) pairs with trusted-zone keys and JPEG-like sizes (copies never decode them)."""
    rng = random.Random(seed)
    images = []
    for i in range(n):
        body = rng.randbytes(rng.randint(low, high) - 4)
        key = f"{IMAGES_PREFIX}dish-{i:05d}__{rng.getrandbits(40):010x}_{1 + i % 3}.jpg"
        images.append((key, b"\xff\xd8\xff\xe0" + body))
    return images


def parallel(fn: Callable, items: list, workers: int) -> None:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(fn, items):
            pass


def download_upload_sequential(lake: Lake, keys: list[str], workers: int) -> None:
    for key in keys:
        lake.put_bytes(FINE_TUNING_ZONE, key, lake.get_bytes(TRUSTED_ZONE, key), "image/jpeg")


def download_upload_parallel(lake: Lake, keys: list[str], workers: int) -> None:
    def one(key: str) -> None:
        lake.put_bytes(FINE_TUNING_ZONE, key, lake.get_bytes(TRUSTED_ZONE, key), "image/jpeg")

    parallel(one, keys, workers)


def server_side_copy(lake: Lake, keys: list[str], workers: int) -> None:
    stats = copy_images(lake, keys, workers=workers)
    assert stats.copied == len(keys), stats


def clear_destination(lake: Lake, workers: int) -> None:
    keys = [o.key for o in lake.list(FINE_TUNING_ZONE, IMAGES_PREFIX)]
    parallel(lambda k: lake.delete(FINE_TUNING_ZONE, k), keys, workers)


def mirrored(lake: Lake) -> bool:
    """The fine-tuning zone holds exactly the trusted images, byte for byte (same ETags)."""
    source = [(o.key, o.etag) for o in lake.list(TRUSTED_ZONE, IMAGES_PREFIX)]
    return source == [(o.key, o.etag) for o in lake.list(FINE_TUNING_ZONE, IMAGES_PREFIX)]


# --------------------------------------------------------------------------- benchmark


def run(n_images: int, repeats: int, workers: int, in_process: bool) -> None:
    server = start_moto(in_process)
    try:
        lake = s3_lake(server.endpoint)
        images = fake_jpegs(n_images)
        parallel(lambda kv: lake.put_bytes(TRUSTED_ZONE, kv[0], kv[1], "image/jpeg"), images, workers)
        keys = [k for k, _ in images]
        total_mb = sum(len(v) for _, v in images) / 1e6
        del images
        print(f"moto S3 at {server.endpoint} ({'thread of this process' if in_process else 'child process'}); "
              f"{n_images} images, {total_mb:.1f} MB, {workers} workers, median of {repeats}; "
              f"{os.cpu_count()} CPUs")

        methods = {
            "copy_images (server-side, parallel)": server_side_copy,
            "download+upload, sequential (notebooks)": download_upload_sequential,
            "download+upload, parallel": download_upload_parallel,
        }
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(repeats):  # round-robin: drift in machine load hits every method alike
            for name, method in methods.items():
                clear_destination(lake, workers)
                start = time.perf_counter()
                method(lake, keys, workers)
                times[name].append(time.perf_counter() - start)
                assert mirrored(lake), f"{name} did not mirror the trusted images"

        rerun = []
        for _ in range(repeats):  # the zone is complete now: every image is skipped by ETag
            stats = copy_images(lake, keys, workers=workers)
            assert (stats.copied, stats.skipped) == (0, n_images), stats
            rerun.append(stats.seconds)

        medians = {name: statistics.median(t) for name, t in times.items()}
        reference = medians["download+upload, sequential (notebooks)"]
        print(f"{'method':40s} {'median s':>9s} {'images/s':>9s} {'MB/s':>7s} {'vs notebooks':>12s}")
        for name, seconds in medians.items():
            print(f"{name:40s} {seconds:9.2f} {n_images / seconds:9.0f} {total_mb / seconds:7.1f} "
                  f"{reference / seconds:11.1f}x")
        idle = statistics.median(rerun)
        print(f"{'copy_images re-run (all skipped)':40s} {idle:9.2f} {n_images / idle:9.0f} {'':>7s} "
              f"{reference / idle:7.1f}x")
        best_client = medians["download+upload, parallel"]
        print(f"server-side copy vs parallel download+upload: {best_client / medians[next(iter(medians))]:.2f}x; "
              f"bytes through this process: 0 vs {2 * total_mb:.0f} MB per copy")
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--in-process", action="store_true", help="run moto in a thread of this process")
    parser.add_argument("--serve-moto", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_moto:
        serve_moto_until_stdin_closes()
        return
    run(args.images, args.repeats, args.workers, args.in_process)


if __name__ == "__main__":
    main()
