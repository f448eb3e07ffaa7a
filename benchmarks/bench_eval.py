"""Benchmark: evaluation image throughput, JPEG bytes to embeddings vs the model's forward alone.

- forward only (the limit, measured in the same process): ``get_image_features`` on
  preprocessed pixel tensors already in memory, evaluation batch size.
- end to end: ``embed_images`` from 512 px JPEG bytes (the trusted zone's format): read,
  decode, EXIF, resize/crop in a thread pool ahead of the model, normalise, forward.
- end to end with ``fast_jpeg_decode`` (JPEG DCT-scaled decoding).

Target: end to end >= 90 % of forward-only images/s.  Medians over ``--repeats``.

    python benchmarks/bench_eval.py                      # tiny CLIP (64 px), 256 images
    python benchmarks/bench_eval.py --model vit-b32 --images 64 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from clipfood_assets.modeling.base_model import build_base_model, build_image_processor
from clipfood_assets.modeling.clip import autocast_context, describe_device, load_clip, resolve_device, resolve_precision
from clipfood_assets.modeling.efficiency import configure_cpu_threads, synchronize
from clipfood_assets.modeling.embed import ImagePreprocessor, default_decode_workers, embed_images, embed_texts
from clipfood_assets.synthetic import generate_recipes, render_dish_image

TARGET_FRACTION = 0.90


def build(kind: str, device: torch.device):
    """(model, processor-like object with an image processor) of the benchmarked architecture."""
    if kind == "vit-b32":
        torch.manual_seed(0)
        model = CLIPModel(CLIPConfig()).to(device).eval()  # ViT-B/32, random weights
        return model, build_image_processor(224)
    directory = build_base_model(Path(tempfile.mkdtemp(prefix="bench_eval_")) / "tiny", pretrain_steps=0)
    return load_clip(directory, device)


def jpeg_images(n: int) -> dict[str, bytes]:
    recipes = generate_recipes(max(1, n // 2), seed=11)
    images = {}
    for i in range(n):
        recipe = recipes[i % len(recipes)]
        images[f"images/bench__{recipe['id']}_{i}.jpg"] = render_dish_image(recipe, 1 + i // len(recipes), seed=11)
    return images


@torch.inference_mode()
def forward_only(model, pixels: torch.Tensor, batch_size: int, device, precision) -> float:
    synchronize(device)
    start = time.perf_counter()
    for first in range(0, pixels.shape[0], batch_size):
        with autocast_context(device, precision):
            features = model.get_image_features(pixel_values=pixels[first:first + batch_size]).pooler_output
        torch.nn.functional.normalize(features.float(), dim=-1).cpu()
    synchronize(device)
    return pixels.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "vit-b32"], default="tiny")
    parser.add_argument("--images", type=int, default=None, help="default 256 tiny, 64 vit-b32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default from cores)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    args = parser.parse_args()

    device = resolve_device(args.device)
    threads = configure_cpu_threads(device)
    precision = resolve_precision(device, args.precision)
    n_images = args.images or (256 if args.model == "tiny" else 64)
    workers = args.workers or default_decode_workers()
    model, processor = build(args.model, device)
    images = jpeg_images(n_images)
    keys = list(images)
    preprocessor = ImagePreprocessor(processor)
    pixels = preprocessor.normalize(torch.stack([preprocessor.to_uint8(images[k]) for k in keys])).to(device)
    print(f"model {args.model}, {n_images} JPEG images of 512 px -> {pixels.shape[-1]} px, batch {args.batch_size}")
    print(f"device {describe_device(device)}, precision {precision}, torch threads {threads}, decode threads {workers}")

    runs: dict[str, list[float]] = {"forward only (in-memory tensors)": [], "end to end (JPEG bytes)": [],
                                    "end to end, fast_jpeg_decode": []}
    forward_only(model, pixels[: args.batch_size], args.batch_size, device, precision)  # warm-up
    for _ in range(args.repeats):
        runs["forward only (in-memory tensors)"].append(
            forward_only(model, pixels, args.batch_size, device, precision))
        for label, fast in (("end to end (JPEG bytes)", False), ("end to end, fast_jpeg_decode", True)):
            _, stats = embed_images(model, processor, keys, images.__getitem__, batch_size=args.batch_size,
                                    device=device, precision=precision, workers=workers, fast_jpeg_decode=fast)
            runs[label].append(stats.items_per_s)

    limit = statistics.median(runs["forward only (in-memory tensors)"])
    print(f"\n{'path':38s} {'images/s':>10s} {'of forward':>11s}")
    for label, values in runs.items():
        median = statistics.median(values)
        print(f"{label:38s} {median:10.1f} {median / limit:10.1%}")
    e2e = statistics.median(runs["end to end (JPEG bytes)"]) / limit
    verdict = "OK" if e2e >= TARGET_FRACTION else "BELOW TARGET"
    print(f"\nend to end / forward only: {e2e:.1%} (target >= {TARGET_FRACTION:.0%}): {verdict}")
    decode = statistics.median(
        n_images / max(1e-9, _time(lambda: [preprocessor.to_uint8(images[k]) for k in keys])) for _ in range(2)
    )
    print(f"single-thread decode + resize: {decode:.0f} images/s per thread (x{workers} threads)")

    if hasattr(processor, "tokenizer"):
        captions = [f"Homemade {r['title_text_raw']}" for r in generate_recipes(512, seed=5)]
        _, text_stats = embed_texts(model, processor, captions, batch_size=args.batch_size, device=device,
                                    precision=precision)
        print(f"captions: {text_stats.items_per_s:.0f} texts/s (padded to the longest of each batch)")


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
