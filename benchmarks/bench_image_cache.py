"""Benchmark: one preprocessing "epoch" from 512 px JPEGs vs from the persistent tensor cache.

The path measured is ``embed_images``' image side without the model: ``iter_uint8_batches``
(read bytes, then decode/resize/crop, or sha256 + read the cached uint8 tensor) in the same
thread pool, for CLIP ViT-B/32's processor settings (224 px) and the tiny model's (64 px).

- no cache: decode every JPEG (the reference, same process);
- cold cache: decode and write each tensor (first epoch of the first run);
- warm cache: sha256 of the bytes + read the tensor (every later epoch, run or evaluation).

Medians over ``--repeats`` (each cold repeat starts from an empty cache directory).

    python benchmarks/bench_image_cache.py                 # 256 images, 2 threads, 3 repeats
    python benchmarks/bench_image_cache.py --images 64 --workers 1
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from clipfood_assets.modeling.base_model import build_image_processor
from clipfood_assets.modeling.embed import ImagePreprocessor, iter_uint8_batches
from clipfood_assets.synthetic import synthetic_trusted_zone


def epoch_seconds(images: dict[str, bytes], preprocessor: ImagePreprocessor, workers: int) -> float:
    """Wall time of one pass over every image, batches of 32 as evaluation uses."""
    start = time.perf_counter()
    count = sum(len(b) for b in iter_uint8_batches(sorted(images), images.__getitem__, preprocessor,
                                                    batch_size=32, workers=workers))
    assert count == len(images)
    return time.perf_counter() - start


def bench_size(images: dict[str, bytes], size: int, workers: int, repeats: int) -> dict[str, float]:
    processor = build_image_processor(size)
    plain, cold, warm = [], [], []
    for _ in range(repeats):
        plain.append(epoch_seconds(images, ImagePreprocessor(processor, image_cache=False), workers))
        with tempfile.TemporaryDirectory(prefix="clipfood-image-cache-") as root:
            cached = ImagePreprocessor(processor, image_cache=Path(root))
            cold.append(epoch_seconds(images, cached, workers))
            warm.append(epoch_seconds(images, cached, workers))
            entry_bytes = sum(p.stat().st_size for p in Path(root).rglob("*.safetensors")) / len(images)
    n = len(images)
    return {"no_cache": n / statistics.median(plain), "cold": n / statistics.median(cold),
            "warm": n / statistics.median(warm), "entry_kib": entry_bytes / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="preprocessing threads")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    _, stream = synthetic_trusted_zone(max(1, args.images), seed=0)
    images = dict(itertools.islice(stream, args.images))
    jpeg_kib = sum(map(len, images.values())) / len(images) / 1024
    print(f"{len(images)} synthetic JPEGs (mean {jpeg_kib:.0f} KiB), {args.workers} threads, "
          f"median of {args.repeats}")
    print(f"{'size':>5} {'no cache img/s':>15} {'cold img/s':>11} {'warm img/s':>11} "
          f"{'warm/no cache':>14} {'entry KiB':>10}")
    for size in (224, 64):
        r = bench_size(images, size, args.workers, args.repeats)
        print(f"{size:>5} {r['no_cache']:>15.0f} {r['cold']:>11.0f} {r['warm']:>11.0f} "
              f"{r['warm'] / r['no_cache']:>13.1f}x {r['entry_kib']:>10.1f}")


if __name__ == "__main__":
    main()
