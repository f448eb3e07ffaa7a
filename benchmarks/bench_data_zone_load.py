"""Data-zone assets on a big trusted zone: 20,000 recipes / 50,000 images, bounded memory.

Issue target: `read_positive_pairs` + `copy_images` (what the `train_pairs_positive` /
`test_pairs_positive` and `fine_tuning_images` assets run) complete on this machine with
memory bounded by the work in flight, not by the zone: the listing is streamed, images are
checked a few at a time, copies are server-side.

The trusted zone is written by this script: a recipes.jsonl of N rows (plus a few bad lines)
and M small valid JPEGs (32x32, a few pre-encoded colours: rendering 50,000 512 px photos
would take far longer than the work measured) under the trusted-zone key convention
``images/<slug>__<recipeId>_<position>.jpg``, plus a few orphan images.

The measured work runs in a fresh child process, so that its peak RSS (ru_maxrss) is the
work's alone; the RSS after imports is printed next to it as the floor, and the zone's size
as what whole-zone buffering would cost. Phases: read_positive_pairs, copy_images, and
copy_images again (idempotent: everything skipped).

    python benchmarks/bench_data_zone_load.py                  # 20,000 recipes / 50,000 images, LocalLake
    python benchmarks/bench_data_zone_load.py --quick          # 400 / 1,000
    python benchmarks/bench_data_zone_load.py --s3 [--s3-recipes 2000 --s3-images 5000]
    python benchmarks/bench_data_zone_load.py --image-side 256  # ~2 GB zone of photo-sized JPEGs
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_copy import s3_lake, serve_moto_until_stdin_closes, start_moto  # noqa: E402

from clipfood_assets.lake.layout import FINE_TUNING_ZONE, IMAGES_PREFIX, RECIPES_KEY, TRUSTED_ZONE  # noqa: E402
from clipfood_assets.synthetic import DESCRIPTORS, DISHES, INGREDIENTS, clean_title, slugify  # noqa: E402

MOTO_ACCOUNT, MOTO_PARTITION = "123456789012", "aws"
BAD_LINES = [b"{not json", b'{"title_text_raw": "No Id Soup"}', b'["a", "list"]']
N_ORPHANS = 5  # images whose recipe id is not in recipes.jsonl


# --------------------------------------------------------------------------- the trusted zone


def jpeg_variants(side: int = 32, n: int = 8) -> list[bytes]:
    """A few valid JPEGs: solid colours at 32 px (tiny), photo-sized noisy ones when larger."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(42)
    variants = []
    for i in range(n):
        colour = np.array([(53 * i) % 256, (97 * i + 40) % 256, (29 * i + 90) % 256], dtype=np.int16)
        pixels = np.broadcast_to(colour, (side, side, 3))
        if side > 32:  # noise keeps JPEG from compressing it away: bytes like a real photo's
            pixels = pixels + rng.integers(-40, 41, size=(side, side, 3), dtype=np.int16)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(buffer, "JPEG", quality=90)
        variants.append(buffer.getvalue())
    return variants


def trusted_zone(n_recipes: int, n_images: int, seed: int = 42) -> tuple[bytes, list[str]]:
    """recipes.jsonl bytes and the image keys: images spread evenly over recipes, a few bad records."""
    rng = random.Random(seed)
    ids: set[str] = set()
    lines, keys = [], []
    per_recipe, extra = divmod(n_images, n_recipes)
    for i in range(n_recipes):
        while (recipe_id := f"{rng.getrandbits(40):010x}") in ids:
            pass
        ids.add(recipe_id)
        title = f"{rng.choice(DESCRIPTORS)} {rng.choice(INGREDIENTS).name} {rng.choice(DISHES).name}"
        n = per_recipe + (1 if i < extra else 0)
        row = {"id": recipe_id, "title_text_raw": title, "title_text_clean": clean_title(title),
               "ingredients": ["1 cup flour", "2 eggs"], "n_images": n}
        lines.append(json.dumps(row).encode())
        keys += [f"images/{slugify(title)}__{recipe_id}_{p}.jpg" for p in range(1, n + 1)]
    for i in range(N_ORPHANS):
        keys.append(f"images/orphan-dish__{'f' * 9}{i}_1.jpg")
    for at, bad in enumerate(BAD_LINES):
        lines.insert(1 + at * (len(lines) // len(BAD_LINES)), bad)
    return b"\n".join(lines) + b"\n", keys


def write_local_zone(root: Path, n_recipes: int, n_images: int, side: int) -> int:
    """Write the zone as LocalLake files; returns its size in bytes."""
    recipes, keys = trusted_zone(n_recipes, n_images)
    variants = jpeg_variants(side)
    zone = root / TRUSTED_ZONE
    (zone / RECIPES_KEY).parent.mkdir(parents=True)
    (zone / RECIPES_KEY).write_bytes(recipes)
    (zone / IMAGES_PREFIX).mkdir(parents=True)
    size = len(recipes)
    for i, key in enumerate(keys):
        body = variants[i % len(variants)]
        (zone / key).write_bytes(body)
        size += len(body)
    return size


def populate_moto_backend(n_recipes: int, n_images: int, side: int) -> None:
    """Child side: the same zone straight into moto's in-memory backend (no HTTP)."""
    from moto.s3.models import s3_backends

    recipes, keys = trusted_zone(n_recipes, n_images)
    variants = jpeg_variants(side)
    backend = s3_backends[MOTO_ACCOUNT][MOTO_PARTITION]
    backend.create_bucket(TRUSTED_ZONE, "us-east-1")
    for i, key in enumerate(keys):
        backend.put_object(TRUSTED_ZONE, key, variants[i % len(variants)], disable_notification=True)
    backend.put_object(TRUSTED_ZONE, RECIPES_KEY, recipes, disable_notification=True)


# --------------------------------------------------------------------------- the measured work (child)


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then each phase reports the process peak so far


def measure_data_zone(lake_spec: str, workers: int) -> dict:
    """Child side: run the data-zone work once on `local:<root>` or `s3:<endpoint>`; figures as a dict."""
    import pandas as pd

    from clipfood_assets.data.prepare import copy_images, read_positive_pairs
    from clipfood_assets.lake import LocalLake

    kind, _, where = lake_spec.partition(":")
    lake = LocalLake(where) if kind == "local" else s3_lake(where)
    figures = {"rss_after_imports_mb": _peak_mb()}

    _reset_peak()
    start = time.perf_counter()
    pairs = read_positive_pairs(lake, workers=workers)
    figures["read_s"] = time.perf_counter() - start
    figures["read_peak_mb"] = _peak_mb()
    figures.update(train_pairs=len(pairs.train), test_pairs=len(pairs.test), quarantined=len(pairs.quarantine),
                   recipes_read=pairs.n_recipes_read, images_listed=pairs.n_images_listed)

    keys = pd.concat([pairs.train["image_key"], pairs.test["image_key"]]).tolist()
    del pairs
    _reset_peak()
    stats = copy_images(lake, keys, workers=workers)
    figures.update(copy_s=stats.seconds, copied=stats.copied, copy_peak_mb=_peak_mb())
    _reset_peak()
    again = copy_images(lake, keys, workers=workers)
    figures.update(rerun_s=again.seconds, rerun_skipped=again.skipped, rerun_peak_mb=_peak_mb())
    figures["copied_listed"] = sum(1 for _ in lake.list(FINE_TUNING_ZONE, IMAGES_PREFIX))
    return figures


def run_child(lake_spec: str, workers: int) -> dict:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--measure", lake_spec, "--workers", str(workers)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(label: str, n_recipes: int, n_images: int, zone_mb: float, wall_s: float, f: dict) -> None:
    expected_pairs = n_images  # one pair per image of a known recipe; orphans are quarantined
    assert f["train_pairs"] + f["test_pairs"] == expected_pairs, f
    assert f["copied"] == f["rerun_skipped"] == f["copied_listed"] == expected_pairs, f
    assert f["quarantined"] >= len(BAD_LINES) + N_ORPHANS, f
    images = f["images_listed"]
    print(f"{label}: {n_recipes} recipes, {images} images listed, zone {zone_mb:.1f} MB; "
          f"{f['train_pairs']} train + {f['test_pairs']} test pairs, {f['quarantined']} quarantined")
    print(f"  {'phase':34s} {'wall s':>8s} {'images/s':>9s} {'peak RSS MB':>12s}")
    for phase, n, seconds, peak in (
        ("read_positive_pairs", images, f["read_s"], f["read_peak_mb"]),
        ("copy_images", f["copied"], f["copy_s"], f["copy_peak_mb"]),
        ("copy_images re-run (all skipped)", f["rerun_skipped"], f["rerun_s"], f["rerun_peak_mb"]),
    ):
        print(f"  {phase:34s} {seconds:8.1f} {n / seconds:9.0f} {peak:12.0f}")
    peak = max(f["read_peak_mb"], f["copy_peak_mb"], f["rerun_peak_mb"])
    print(f"  total {f['read_s'] + f['copy_s']:.1f} s for pairs + copy (child wall {wall_s:.1f} s incl. imports); "
          f"peak RSS {peak:.0f} MB vs {f['rss_after_imports_mb']:.0f} MB after imports "
          f"(+{peak - f['rss_after_imports_mb']:.0f} MB for a {zone_mb:.0f} MB zone)")


def bench_local(n_recipes: int, n_images: int, side: int, workers: int, tmp_dir: str | None) -> None:
    tmp = tempfile.TemporaryDirectory(prefix="bench-data-zone-", dir=tmp_dir)
    try:
        root = Path(tmp.name) / "lake"
        start = time.perf_counter()
        zone_mb = write_local_zone(root, n_recipes, n_images, side) / 1e6
        print(f"wrote the trusted zone ({n_images + N_ORPHANS} images) under {root} "
              f"in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        figures = run_child(f"local:{root}", workers)
        report("LocalLake", n_recipes, n_images, zone_mb, time.perf_counter() - start, figures)
    finally:
        # Deleting ~2 x N files can take minutes on a disk mounted with `discard`; say where time goes.
        start = time.perf_counter()
        tmp.cleanup()
        print(f"(removed the benchmark's lake in {time.perf_counter() - start:.1f} s; not part of the figures)")


def bench_s3(n_recipes: int, n_images: int, side: int, workers: int) -> None:
    start = time.perf_counter()
    server = start_moto(child_args=[os.path.abspath(__file__), "--serve-moto", "--recipes", str(n_recipes),
                                    "--images", str(n_images), "--image-side", str(side)])
    print(f"moto S3 (child process at {server.endpoint}) filled through its backend in "
          f"{time.perf_counter() - start:.1f} s")
    try:
        recipes, keys = trusted_zone(n_recipes, n_images)
        variants = jpeg_variants(side)
        zone_mb = (len(recipes) + sum(len(variants[i % len(variants)]) for i in range(len(keys)))) / 1e6
        start = time.perf_counter()
        figures = run_child(f"s3:{server.endpoint}", workers)
        report("S3Lake (moto)", n_recipes, n_images, zone_mb, time.perf_counter() - start, figures)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", type=int, default=20_000)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true", help="400 recipes / 1,000 images (and the same over S3)")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--image-side", type=int, default=32,
                        help="32: tiny solid JPEGs (~0.7 KB); e.g. 256: noisy photo-sized ones (~40 KB)")
    parser.add_argument("--tmp-dir", help="where the local lake is written (default: the system temp dir)")
    parser.add_argument("--s3", action="store_true", help="also run over a moto S3 server")
    parser.add_argument("--s3-only", action="store_true", help="run over moto S3 only")
    parser.add_argument("--s3-recipes", type=int, default=2_000,
                        help="moto serves a few hundred requests/s: the S3 run is smaller by default")
    parser.add_argument("--s3-images", type=int, default=5_000)
    parser.add_argument("--serve-moto", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.recipes, args.images = 400, 1_000
        args.s3_recipes, args.s3_images = 400, 1_000
    if args.recipes < 2 or args.images < 0:
        parser.error("need at least 2 recipes")
    if args.serve_moto:
        serve_moto_until_stdin_closes(lambda: populate_moto_backend(args.recipes, args.images, args.image_side))
        return
    if args.measure:
        print(json.dumps(measure_data_zone(args.measure, args.workers)))
        return
    print(f"{os.cpu_count()} CPUs, {args.workers} I/O workers, {args.image_side} px JPEGs")
    if not args.s3_only:
        bench_local(args.recipes, args.images, args.image_side, args.workers, args.tmp_dir)
    if args.s3 or args.s3_only:
        bench_s3(args.s3_recipes, args.s3_images, args.image_side, args.workers)


if __name__ == "__main__":
    main()
