"""Benchmark: one epoch of pixels from the packed image store vs one epoch of decoding the JPEGs.

On N synthetic 512 px JPEGs in a local lake (the fine-tuning zone's ``images/``), with the
preprocessing of the tiny offline base model (64 px; ``--size 224`` for CLIP ViT-B/32's):

- store build, cold (empty store), decoding in spawned processes vs in threads (img/s of the
  decode phase, and the whole build's wall time, pool start-up included);
- one epoch through the warm store: ``PackedImageStore.get`` over every key in shuffled batches of
  ``--batch`` (shards already copied to the local cache and verified, memory-mapped);
- the reference, measured in the same run: one epoch through ``DecodedImages`` (the JPEG-decoding
  ``ImageSource``, ``--workers`` threads) with the same preprocessor, full decode and DCT-scaled
  (``fast_jpeg_decode``) decode;
- with ``--device cuda`` (torchvision there): the build with nvjpeg + torch resize on the GPU, and
  its pixels against the PIL reference (per-image mean and max |difference|, vs ``TOLERANCE``).

Medians over ``--repeats``.

    python benchmarks/bench_image_store.py                # 512 images, 64 px, 2 workers, 5 repeats
    python benchmarks/bench_image_store.py --images 256 --size 224
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

# Heavy imports live in the functions: a spawned decode worker imports this module as __mp_main__.


def make_lake(root: Path, n: int):
    from clipfood_assets.lake import LocalLake
    from clipfood_assets.lake.layout import FINE_TUNING_ZONE
    from clipfood_assets.synthetic import generate_recipes, render_dish_image

    lake = LocalLake(root / "lake")
    images: dict[str, bytes] = {}
    recipes = generate_recipes(max(1, n // 2), seed=0)
    position = 0
    while len(images) < n:
        for recipe in recipes:
            if len(images) == n:
                break
            key = f"images/{recipe['id']}__{recipe['id']}_{position}.jpg"
            images[key] = render_dish_image(recipe, position, seed=0)
        position += 1
    for key, data in images.items():
        lake.put_bytes(FINE_TUNING_ZONE, key, data)
    return lake, images


def processor_for(size: int, root: Path):
    if size == 64:
        from transformers import CLIPProcessor

        from clipfood_assets.modeling.base_model import build_base_model

        return CLIPProcessor.from_pretrained(build_base_model(root / "base_model", seed=0, pretrain_steps=0))
    try:
        from clipfood_assets.modeling.base_model import build_image_processor

        return build_image_processor(size)
    except ImportError:  # another transformers (the GPU machine's): the same recipe, its default backend
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def epoch_store(store, keys: list[str], batch: int, seed: int) -> float:
    order = list(keys)
    random.Random(seed).shuffle(order)
    start = time.perf_counter()
    rows = 0
    for first in range(0, len(order), batch):
        rows += len(store.get(order[first:first + batch]))
    assert rows == len(keys)
    return time.perf_counter() - start


def epoch_decoded(images: dict[str, bytes], preprocessor, keys: list[str], batch: int, workers: int, seed: int) -> float:
    from clipfood_assets.modeling.images import DecodedImages

    order = list(keys)
    random.Random(seed).shuffle(order)
    start = time.perf_counter()
    source = DecodedImages(images.__getitem__, preprocessor, workers)
    rows = 0
    try:
        batches = [order[i:i + batch] for i in range(0, len(order), batch)]
        for i, chunk in enumerate(batches):
            if i + 1 < len(batches):
                source.prefetch(batches[i + 1])  # decode ahead, as a training loop does
            rows += len(source.get(chunk))
            source.forget(chunk)
    finally:
        source.close()
    assert rows == len(keys)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=64, help="64: the tiny base model's processor; else CLIP's at SIZE")
    parser.add_argument("--workers", type=int, default=2, help="decode processes/threads")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cuda: also build on the GPU and check its pixels")
    args = parser.parse_args()

    import torch

    from clipfood_assets.modeling.embed import ImagePreprocessor
    from clipfood_assets.modeling.image_store import TOLERANCE, PackedImageStore, update_image_store

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="clipfood-bench-store-") as tmp:
        root = Path(tmp)
        lake, images = make_lake(root, args.images)
        processor = processor_for(args.size, root)
        keys = sorted(images)
        jpeg_kib = sum(map(len, images.values())) / len(images) / 1024
        print(f"{len(images)} synthetic 512 px JPEGs (mean {jpeg_kib:.0f} KiB) -> uint8 3x{args.size}x{args.size}, "
              f"{args.workers} workers, batch {args.batch}, median of {args.repeats}")

        build = {"processes": [], "threads": []}
        for repeat in range(args.repeats):
            for executor in ("processes", "threads") if repeat % 2 == 0 else ("threads", "processes"):
                start = time.perf_counter()
                result = update_image_store(lake, processor, executor=executor, workers=args.workers, rebuild=True,
                                            shard_bytes=64 << 20)
                wall = time.perf_counter() - start
                assert result.decoded == len(images) and not result.failures
                build[executor].append((result.decode_images_per_s, len(images) / wall))
        print("\nstore build, cold (all images decoded, shards written to the lake):")
        for executor, runs in build.items():
            decode = statistics.median(r[0] for r in runs)
            whole = statistics.median(r[1] for r in runs)
            print(f"  {executor:<9}  decode {decode:8.0f} img/s   whole build {whole:8.0f} img/s")

        if args.device.startswith("cuda"):
            cuda_runs = []
            for _ in range(args.repeats + 1):  # the first also starts CUDA and nvjpeg: not counted
                start = time.perf_counter()
                result = update_image_store(lake, processor, device=args.device, workers=args.workers, rebuild=True,
                                            shard_bytes=64 << 20)
                cuda_runs.append((result.decode_images_per_s, len(images) / (time.perf_counter() - start)))
                assert result.decoded_by.get("cuda") == len(images), result.decoded_by
            print(f"  {'cuda':<9}  decode {statistics.median(r[0] for r in cuda_runs[1:]):8.0f} img/s   "
                  f"whole build {statistics.median(r[1] for r in cuda_runs[1:]):8.0f} img/s  (nvjpeg + torch resize)")
            reference = ImagePreprocessor(processor)
            with PackedImageStore(lake, "fine-tuning-zone", result.prefix, cache_dir=root / "cuda-cache",
                                  pin_memory=False) as store:
                pixels = store.get(keys)
            means, tops = [], []
            for row, key in enumerate(keys):
                diff = (pixels[row].int() - reference.to_uint8(images[key]).int()).abs()
                means.append(float(diff.float().mean()))
                tops.append(int(diff.max()))
            within = max(means) <= TOLERANCE["mean_abs"] and max(tops) <= TOLERANCE["max_abs"]
            print(f"  cuda pixels vs PIL reference: mean |diff| median {statistics.median(means):.3f}, "
                  f"worst image {max(means):.3f}; max |diff| median {statistics.median(tops)}, worst {max(tops)} "
                  f"(tolerance {TOLERANCE}: {'within' if within else 'EXCEEDED'})")

        with PackedImageStore(lake, "fine-tuning-zone", result.prefix, cache_dir=root / "cache",
                              pin_memory=False) as store:
            epoch_store(store, keys, args.batch, seed=0)  # warm: shards copied, verified, paged in
            store_s = [epoch_store(store, keys, args.batch, seed=r) for r in range(args.repeats)]
            shards, size = result.shards, result.bytes
        full = ImagePreprocessor(processor)
        draft = ImagePreprocessor(processor, fast_jpeg_decode=True)
        full_s = [epoch_decoded(images, full, keys, args.batch, args.workers, seed=r) for r in range(args.repeats)]
        draft_s = [epoch_decoded(images, draft, keys, args.batch, args.workers, seed=r) for r in range(args.repeats)]

        n = len(keys)
        store_rate = n / statistics.median(store_s)
        full_rate = n / statistics.median(full_s)
        draft_rate = n / statistics.median(draft_s)
        print(f"\none epoch, shuffled batches ({shards} shard(s), {size / 2**20:.1f} MiB):")
        print(f"  warm store                       {store_rate:10.0f} img/s  ({statistics.median(store_s) * 1e3:7.1f} ms)")
        print(f"  JPEG decode (DecodedImages)      {full_rate:10.0f} img/s  ({statistics.median(full_s) * 1e3:7.1f} ms)"
              f"   store is {store_rate / full_rate:5.0f}x faster")
        print(f"  JPEG decode, DCT-scaled (draft)  {draft_rate:10.0f} img/s  ({statistics.median(draft_s) * 1e3:7.1f} ms)"
              f"   store is {store_rate / draft_rate:5.0f}x faster")


if __name__ == "__main__":
    main()
