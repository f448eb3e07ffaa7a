"""Benchmark: our contrastive training step vs the original notebooks', same model, same effective batch (32).

- ours: micro-batch 8 x 4 accumulation with the feature cache: every pair is contrasted with
  the other 31 pairs of the optimizer step.
- notebook-style (the reference, measured in the same process): micro-batch 2 x 16 accumulation,
  one InfoNCE per micro-batch: 1 negative per pair.

Both run LoRA (r 8, q/k/v/out, both towers) with AdamW and gradient clipping on random
pixels and token ids (16 tokens, like a recipe title), so the figures are the training
step itself.  Steps alternate between the two loops; medians over ``--steps`` steps.
Prints pairs/s, negatives per pair, the time-per-pair ratio (target: ours <= 1.35x the
notebooks') and model FLOPs utilisation (FLOPs of one forward + backward per pair, counted
with torch's FlopCounterMode; recomputation in the feature cache is *not* useful work).

    python benchmarks/bench_training.py                       # tiny CLIP (hidden 64, 64 px)
    python benchmarks/bench_training.py --model vit-b32 --steps 2   # ViT-B/32 random weights
    python benchmarks/bench_training.py --e2e                  # also train_lora end to end (tiny)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPConfig, CLIPModel

from clipfood_assets.modeling.clip import autocast_context, describe_device, resolve_device, resolve_precision
from clipfood_assets.modeling.config import LoraSettings, load_experiment_config
from clipfood_assets.modeling.efficiency import configure_cpu_threads, peak_memory, reset_peak_memory, synchronize
from clipfood_assets.modeling.lora import apply_adapters, count_parameters, logit_scale_parameter
from clipfood_assets.modeling.losses import (
    FeatureCacheAccumulator,
    accumulate_per_micro_batch,
    clamp_logit_scale_,
    contrastive_loss,
    negatives_per_pair,
)

TARGET_RATIO = 1.35
EFFECTIVE_BATCH = 32
TEXT_TOKENS = 16
# Dense peak TFLOP/s for the MFU denominator (bf16 tensor cores; fp32 uses the fp32 figure).
PEAK_TFLOPS = {"H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
               "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
               "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}}


def build_model(kind: str, device: torch.device) -> tuple[torch.nn.Module, int, int, int]:
    """(LoRA model, image size, vocab size, eos id) of the benchmarked architecture."""
    torch.manual_seed(0)
    if kind == "vit-b32":
        config = CLIPConfig()  # ViT-B/32 defaults, random weights
    else:
        from clipfood_assets.modeling.base_model import build_base_model

        directory = build_base_model(Path(tempfile.mkdtemp(prefix="bench_tiny_")) / "tiny", pretrain_steps=0)
        config = CLIPConfig.from_pretrained(directory)
    model = CLIPModel(config)
    model = apply_adapters(model, LoraSettings()).to(device)
    model.train()
    text = config.text_config
    return model, config.vision_config.image_size, text.vocab_size, text.eos_token_id


def make_batch(n_pairs: int, micro: int, image_size: int, vocab: int, eos: int, generator) -> list[dict]:
    pixels = torch.randn(n_pairs, 3, image_size, image_size, generator=generator)
    ids = torch.randint(0, vocab, (n_pairs, TEXT_TOKENS), generator=generator)
    ids[ids == eos] = (eos + 1) % vocab  # the text tower pools at the first end-of-text token
    ids[:, -1] = eos
    recipes = [f"recipe-{i}" for i in range(n_pairs)]  # all distinct: every other pair is a negative
    return [{"pixels": pixels[i:i + micro], "ids": ids[i:i + micro], "recipes": recipes[i:i + micro]}
            for i in range(0, n_pairs, micro)]


class Loop:
    """One optimizer step over a batch, with feature caching (ours) or per micro-batch (the notebooks' way)."""

    def __init__(self, model, device, precision, feature_cache: bool) -> None:
        self.model, self.device, self.precision = model, device, precision
        self.logit_scale = logit_scale_parameter(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-5, fused=device.type == "cuda")
        self.feature_cache = feature_cache
        self.accumulator = FeatureCacheAccumulator(self.encode, self.loss)

    def encode(self, micro: dict) -> dict[str, torch.Tensor]:
        with autocast_context(self.device, self.precision):
            image = self.model.get_image_features(pixel_values=micro["pixels"].to(self.device)).pooler_output
            text = self.model.get_text_features(input_ids=micro["ids"].to(self.device)).pooler_output
        return {"image": image, "text": text}

    def loss(self, features: dict, micros) -> torch.Tensor:
        return contrastive_loss(features["image"], features["text"], self.logit_scale,
                                recipe_ids=[r for m in micros for r in m["recipes"]], kind="clip")

    def step(self, micros: list[dict]) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        if self.feature_cache:
            self.accumulator.accumulate(micros)
        else:
            accumulate_per_micro_batch(micros, self.encode, self.loss)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        clamp_logit_scale_(self.logit_scale)
        synchronize(self.device)
        return time.perf_counter() - start


def model_flops_per_pair(loop: Loop, micro: dict) -> float:
    """FLOPs of one plain forward + backward of a micro-batch, per pair (the useful work)."""
    counter = FlopCounterMode(display=False)
    with counter:
        features = loop.encode(micro)
        loop.loss(features, [micro]).backward()
    loop.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / micro["pixels"].shape[0]


def peak_tflops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, table in PEAK_TFLOPS.items():
        if key in name:
            return table.get(precision)
    return None


def run_e2e(device: torch.device, epochs: int) -> None:
    """train_lora itself (data cache, tokenisation, logging) on a synthetic tiny run, both settings."""
    import json

    import pandas as pd

    from clipfood_assets.modeling.base_model import build_base_model
    from clipfood_assets.modeling.train import train_lora
    from clipfood_assets.synthetic import synthetic_trusted_zone

    work = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    base = build_base_model(work / "tiny", pretrain_steps=0)
    recipes_jsonl, image_iter = synthetic_trusted_zone(80, seed=3)
    titles = {r["id"]: r["title_text_raw"] for r in map(json.loads, recipes_jsonl.decode().splitlines())}
    images = dict(image_iter)
    pairs = pd.DataFrame({"image_key": sorted(images)})
    pairs["recipe_id"] = pairs["image_key"].str.rsplit("__", n=1).str[1].str.rsplit("_", n=1).str[0]
    pairs["caption"] = pairs["recipe_id"].map(titles)
    pairs["label"] = 1
    settings = {
        "ours (8 x 4, feature cache)": {"batch_size": 8, "gradient_accumulation_steps": 4},
        "notebook-style (2 x 16, per micro-batch)": {"batch_size": 2, "gradient_accumulation_steps": 16,
                                                 "accumulation": "per_micro_batch", "mask_same_recipe": False},
    }
    print(f"\ntrain_lora end to end, tiny CLIP, {len(pairs)} pairs x {epochs} epochs:")
    for name, training in settings.items():
        cfg = load_experiment_config(overrides={"training": {"epochs": epochs, "loss": "clip", "precision": "auto",
                                                             "checkpoint_every_steps": 10_000, **training}})
        result = train_lora(str(base), pairs, images.__getitem__, cfg, device=device, work_dir=work / name[:4])
        steps = result.training_logs["steps"]
        later = [s["samples_per_s"] for s in steps[len(steps) // 3:]] or [result.samples_per_s]
        print(f"  {name:38s} {result.samples_per_s:8.1f} pairs/s overall, median {statistics.median(later):8.1f} "
              f"pairs/s after warm-up, {result.training_logs['negatives_per_pair']:.1f} negatives/pair")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "vit-b32"], default="tiny")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per loop (default 10 tiny, 2 vit-b32)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--e2e", action="store_true", help="also time train_lora end to end (tiny model)")
    parser.add_argument("--e2e-epochs", type=int, default=3)
    args = parser.parse_args()

    device = resolve_device(args.device)
    threads = configure_cpu_threads(device)
    precision = resolve_precision(device, args.precision)
    steps = args.steps or (10 if args.model == "tiny" else 2)
    model, image_size, vocab, eos = build_model(args.model, device)
    trainable, total = count_parameters(model)
    print(f"model {args.model}: {total:,} parameters, {trainable:,} trainable (LoRA r 8 + logit scale)")
    print(f"device {describe_device(device)}, precision {precision}, torch threads {threads}")

    generator = torch.Generator().manual_seed(0)
    setups = {
        "ours": (Loop(model, device, precision, feature_cache=True), 8),
        "notebook": (Loop(model, device, precision, feature_cache=False), 2),
    }
    times: dict[str, list[float]] = {name: [] for name in setups}
    peaks: dict[str, int] = {}
    for name, (loop, micro) in setups.items():  # warm-up: allocator, kernels, thread pools
        loop.step(make_batch(EFFECTIVE_BATCH, micro, image_size, vocab, eos, generator))
    for _ in range(steps):
        for name, (loop, micro) in setups.items():
            batch = make_batch(EFFECTIVE_BATCH, micro, image_size, vocab, eos, generator)
            reset_peak_memory(device)
            times[name].append(loop.step(batch))
            peaks[name] = max(peaks.get(name, 0), peak_memory(device)[0])

    flops = model_flops_per_pair(setups["ours"][0], make_batch(8, 8, image_size, vocab, eos, generator)[0])
    peak = peak_tflops(device, precision)
    kind = peak_memory(device)[1]
    print(f"\nmedian of {steps} optimizer steps, effective batch {EFFECTIVE_BATCH} pairs:")
    print(f"{'loop':38s} {'s/step':>8s} {'pairs/s':>9s} {'neg/pair':>9s} {'TFLOP/s':>8s} {'MFU':>6s} {'peak mem':>10s}")
    per_pair = {}
    for name, label, n_micro in (("ours", "ours (8 x 4, feature cache)", 8),
                                 ("notebook", "notebook-style (2 x 16, per micro-batch)", 2)):
        median = statistics.median(times[name])
        per_pair[name] = median / EFFECTIVE_BATCH
        recipes = [f"r{i}" for i in range(EFFECTIVE_BATCH if name == "ours" else n_micro)]
        achieved = flops * EFFECTIVE_BATCH / median / 1e12
        mfu = f"{achieved / peak:6.1%}" if peak else "   n/a"
        print(f"{label:38s} {median:8.3f} {EFFECTIVE_BATCH / median:9.1f} {negatives_per_pair(recipes):9.0f} "
              f"{achieved:8.3f} {mfu} {peaks[name] / 2**20:8.0f} MiB")
    ratio = per_pair["ours"] / per_pair["notebook"]
    verdict = "OK" if ratio <= TARGET_RATIO else "ABOVE TARGET"
    print(f"\ntime per pair, ours / notebook-style: {ratio:.2f}x (target <= {TARGET_RATIO}x): {verdict}")
    print(f"model FLOPs per pair (forward + backward, LoRA): {flops / 1e9:.2f} GFLOP; peak memory kind: {kind}")
    if args.e2e:
        run_e2e(device, args.e2e_epochs)


if __name__ == "__main__":
    main()
