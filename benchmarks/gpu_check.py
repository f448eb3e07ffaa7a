"""The GPU path in one call: training step and its config choices, full fine-tune reference, train_lora end
to end, evaluation (eager and compiled), and dynamo's count of graphs over the whole sequence.

    python benchmarks/gpu_check.py            # one CUDA GPU, ViT-B/32 (random weights), bf16: < 5 min on an H200
    python benchmarks/gpu_check.py --small    # the tiny offline CLIP on the CPU: < 3 min on 2 cores
    python benchmarks/gpu_check.py --small --compile-backend eager   # the same sequence compiled (graphs counted)

Everything runs through the project's own code on synthetic 512 px JPEGs written to a local
lake: the packed image store (``update_image_store``, nvjpeg on CUDA), ``train_lora``'s
``_Run`` for the bare step (batch_size 256 / 1024 / auto, compiled, bf16 frozen base, images
on the device), the step's config choices against their defaults at the big batch (LoRA dropout
0.05 vs none; on CUDA also fp32 adapter inputs, cuDNN autotuning off), ``train_lora`` end to end
(cold first epoch, warm later ones, GPU busy sampled by NVML), and ``embed_images`` from the store
(warm, with one reader and with STORE_READERS) and from the JPEGs (cold: store build plus
embedding) against the forward pass alone; on CUDA the forward pass compiled too, with its compile
time and the gallery size from which compiling pays.  The reference the LoRA step is compared
with runs in the same process: a plain full fine-tune (every weight trained, bf16 weights,
eager) at the best LoRA batch.

Prints one table, then, last, one JSON line with every figure (keys in ``FIGURES``,
``CUDA_FIGURES`` and ``DYNAMO_FIGURES``).  Needs torch, transformers, peft, pandas, pyyaml, pillow,
safetensors, pydantic, pydantic-settings and minio (torchvision for nvjpeg);
``bash benchmarks/gpu_wheels.sh`` downloads the wheels a bare CUDA machine lacks.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a bare checkout

from clipfood_assets.lake.layout import FINE_TUNING_ZONE, IMAGES_PREFIX  # noqa: E402
from clipfood_assets.lake.local import LocalLake  # noqa: E402
from clipfood_assets.modeling import clip  # noqa: E402
from clipfood_assets.modeling.clip import autocast_context, describe_device, load_clip  # noqa: E402
from clipfood_assets.modeling.config import deep_merge, load_experiment_config  # noqa: E402
from clipfood_assets.modeling.efficiency import configure_cpu_threads, synchronize  # noqa: E402
from clipfood_assets.modeling.embed import STORE_READERS  # noqa: E402

FIGURES = ("device", "lora_pairs_per_s", "lora_mfu", "full_ft_pairs_per_s", "auto_pairs_per_s",
           "train_warm_over_step", "gpu_busy", "eval_forward_img_per_s", "eval_warm_over_forward",
           "eval_cold_img_per_s", "eval_cold_over_forward", "lora_dropout_pairs_per_s", "lora_no_dropout_pairs_per_s",
           "eval_one_reader_over_forward", "eval_readers_over_forward")
# Measured on CUDA only (both choices are no-ops in fp32; compiling is what --compile-backend asks for elsewhere).
CUDA_FIGURES = ("lora_fp32_inputs_pairs_per_s", "lora_cudnn_benchmark_off_pairs_per_s",
                "eval_compiled_forward_img_per_s", "eval_compile_s", "eval_compile_break_even_items")
# Over the whole sequence, from torch._dynamo's counters (0 graphs when nothing was compiled).
DYNAMO_FIGURES = ("dynamo_graphs", "dynamo_fallbacks", "dynamo_graph_breaks")
# Dense bf16 tensor-core peak for the MFU denominator (vendor datasheets; fp32 for CPUs is not defined).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}
PROFILES = {
    "full": {"model": "vit-b32", "images": 4096, "captions_per_image": 2, "step_batches": (256, 1024),
             "timed_steps": 12, "e2e_epochs": 6, "eval_batch": 512, "repeats": 3},
    "small": {"model": "tiny", "images": 1024, "captions_per_image": 2, "step_batches": (16, 64),
              "timed_steps": 6, "e2e_epochs": 3, "eval_batch": 32, "repeats": 5},
}
CAPTION_FORMS = ("{}", "homemade {}", "{}, plated", "a bowl of {}")
# training.compile / evaluation.compile of every config here; --compile-backend makes it "on".
COMPILE = {"setting": "auto"}


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- data and model


def _render(args: tuple[dict, int, int]) -> list[bytes]:
    """One synthetic picture saved at ``copies`` JPEG qualities (distinct bytes, same dish)."""
    from clipfood_assets.synthetic import render_dish_picture

    recipe, copies, seed = args
    picture = render_dish_picture(recipe, 1, seed, 512)
    out = []
    for i in range(copies):
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=85 + i % 10)
        out.append(buffer.getvalue())
    return out


def make_lake(root: Path, n_images: int, captions_per_image: int, workers: int):
    """A local lake with ``n_images`` JPEGs under the fine-tuning zone's images/ and the pairs
    (``captions_per_image`` positives and one labelled negative per image)."""
    import pandas as pd

    from clipfood_assets.synthetic import generate_recipes

    copies = 4
    recipes = generate_recipes(max(2, n_images // copies), seed=5)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        rendered = list(pool.map(_render, [(r, copies, 5) for r in recipes], chunksize=8))
    lake = LocalLake(root / "lake")
    rows = []
    for index, (recipe, jpegs) in enumerate(zip(recipes, rendered, strict=True)):
        other = recipes[(index + 1) % len(recipes)]
        for n, data in enumerate(jpegs):
            key = f"{IMAGES_PREFIX}dish__{recipe['id']}_{n}.jpg"
            lake.put_bytes(FINE_TUNING_ZONE, key, data)
            title = recipe["title_text_raw"]
            for form in CAPTION_FORMS[:captions_per_image]:
                rows.append({"recipe_id": recipe["id"], "image_key": key, "caption": form.format(title), "label": 1})
            rows.append({"recipe_id": recipe["id"], "image_key": key, "caption": other["title_text_raw"],
                         "label": 0, "negative_recipe_id": other["id"]})
    return lake, pd.DataFrame(rows)


def make_base_model(kind: str, root: Path) -> Path:
    """A CLIP directory loadable by ``load_clip``: the tiny offline model, or ViT-B/32's
    architecture (random weights, 224 px, the offline tokenizer) when no hub is reachable."""
    from clipfood_assets.modeling.base_model import build_base_model, build_image_processor, train_tokenizer

    if kind == "tiny":
        return build_base_model(root / "tiny", pretrain_steps=0)
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    from clipfood_assets.synthetic import caption_corpus

    tokenizer = train_tokenizer(caption_corpus(seed=0, n=2000))
    text = {"vocab_size": len(tokenizer), "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text))  # ViT-B/32 defaults otherwise
    out = root / "vit-b32"
    model.save_pretrained(out, safe_serialization=True)
    CLIPProcessor(image_processor=build_image_processor(224), tokenizer=tokenizer).save_pretrained(out)
    return out


def training_config(batch, effective: int, *, epochs: int = 1, compile_: str | None = None,
                    overrides: dict | None = None):
    """The platform's defaults (LoRA dropout auto among them) for a step of ``effective`` pairs in
    micro-batches of ``batch``, with ``overrides`` (a nested mapping) on top."""
    setting = compile_ or COMPILE["setting"]
    base = {"training": {"batch_size": batch, "effective_batch_size": effective, "epochs": epochs,
                         "checkpoint_every_steps": 100_000, "keep_checkpoints": 1, "warmup_ratio": 0.0,
                         "compile": setting, "learning_rate": 1e-4},
            "evaluation": {"compile": setting}}
    return load_experiment_config(overrides=deep_merge(base, overrides or {}))


# --------------------------------------------------------------------------- measurements


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)


def start_run(base: Path, pairs, store, cfg, device, work: Path):
    from clipfood_assets.modeling.batching import prepare_training_pairs
    from clipfood_assets.modeling.clip import resolve_precision
    from clipfood_assets.modeling.distributed import DistributedWorld
    from clipfood_assets.modeling.train import _Run

    return _Run.start(str(base), cfg.on_device(device), prepare_training_pairs(pairs), store, device=device,
                      precision=resolve_precision(device, cfg.training.precision), world=DistributedWorld(),
                      work_dir=work, with_negatives=True, on_checkpoint=None, log=None, validation_pairs=None)


def bare_step(run, timed: int) -> dict:
    """Median seconds of ``run.optimizer_step`` over ``timed`` steps (after warm-up), synchronised."""
    from clipfood_assets.modeling.batching import epoch_batches

    effective = run.cfg.training.effective_batch_size
    batches = epoch_batches(len(run.pairs), effective, 0, 0)
    batches = [b for b in batches if len(b) == effective] or batches
    steps = [run.builder.build(batches[i % len(batches)]) for i in range(min(len(batches), 4))]
    run.model.train()
    torch.cuda.reset_peak_memory_stats(run.device) if run.device.type == "cuda" else None
    for i in range(3):  # compile, autotune, allocator
        run.optimizer_step(steps[i % len(steps)])
    synchronize(run.device)
    times = []
    for i in range(timed):
        started = time.perf_counter()
        run.optimizer_step(steps[i % len(steps)])
        synchronize(run.device)
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(run.device) if run.device.type == "cuda" else 0
    return {"pairs_per_s": steps[0].n_pairs / seconds, "step_s": seconds, "micro_batch": run.micro_batch,
            "peak_gib": peak / 2**30, "n_pairs": steps[0].n_pairs}


def flops_per_pair(base: Path, pairs, store, device, work: Path, n_pairs: int) -> float:
    """FLOPs of one plain forward + backward per pair (eager, counted by torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    run = start_run(base, pairs, store, training_config(n_pairs, n_pairs, compile_="off"), device, work)
    try:
        from clipfood_assets.modeling.batching import epoch_batches

        step = run.builder.build(epoch_batches(len(run.pairs), n_pairs, 0, 0)[0])
        counter = FlopCounterMode(display=False)
        with counter:
            run.loss_fn(run.encode(step.micros[0]), step.micros).backward()
        return counter.get_total_flops() / step.n_pairs
    finally:
        run.close()


def full_fine_tune(base: Path, run, timed: int) -> dict:
    """The reference: every weight trained (bf16 weights on CUDA, eager), same steps, same loss."""
    from transformers import CLIPModel

    from clipfood_assets.modeling.losses import contrastive_loss

    device = run.device
    model = CLIPModel.from_pretrained(str(base), use_safetensors=True).to(device)
    if device.type == "cuda":
        model.to(torch.bfloat16)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    from clipfood_assets.modeling.batching import epoch_batches

    effective = run.cfg.training.effective_batch_size
    steps = [run.builder.build(b) for b in epoch_batches(len(run.pairs), effective, 0, 0)[:4]]

    def one(step) -> None:
        micro = step.micros[0]
        pixels = micro.pixels if micro.pixels is not None else run.resident.get(micro.image_keys)
        pixels = run.preprocessor.normalize(pixels.to(device, non_blocking=True))
        with autocast_context(device, run.precision):
            image = model.get_image_features(pixel_values=pixels).pooler_output
            text = model.get_text_features(input_ids=micro.text_ids.to(device, non_blocking=True),
                                           attention_mask=micro.text_mask.to(device, non_blocking=True)).pooler_output
        n, captions = micro.n_pairs, micro.n_pairs + len(micro.negative_codes)  # rows past these: padding
        loss = contrastive_loss(image[:n], text[:n], model.logit_scale, recipe_ids=micro.pair_codes,
                                negative_text_emb=text[n:captions], negative_recipe_ids=micro.negative_codes)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(2):
        one(steps[i % len(steps)])
    synchronize(device)
    times = []
    for i in range(timed):
        started = time.perf_counter()
        one(steps[i % len(steps)])
        synchronize(device)
        times.append(time.perf_counter() - started)
    return {"pairs_per_s": steps[0].n_pairs / statistics.median(times)}


class BusySampler:
    """GPU busy % (NVML, via torch.cuda.utilization) sampled every 100 ms between marks."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.samples, self._stop = device, [], threading.Event()
        self.marks: dict[str, float] = {}
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.available = device.type == "cuda"
        if self.available:
            try:
                torch.cuda.utilization(device)
            except Exception as exc:  # no NVML: say so, never fail the check
                log(f"  (GPU busy not sampled: {exc})")
                self.available = False
        if self.available:
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append((time.perf_counter(), torch.cuda.utilization(self.device)))

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.perf_counter())

    def busy(self, start: str, stop: str) -> float | None:
        self._stop.set()
        if not self.available or start not in self.marks or stop not in self.marks:
            return None
        inside = [u for t, u in self.samples if self.marks[start] <= t <= self.marks[stop]]
        return statistics.mean(inside) / 100 if inside else None


def train_end_to_end(base: Path, pairs, store, device, work: Path, batch: int, epochs: int, step_pairs_per_s: float):
    """train_lora itself: epoch 1 cold (compile, images to the device), later epochs warm."""
    from clipfood_assets.modeling.train import train_lora

    cfg = training_config("auto" if device.type == "cuda" else batch, batch, epochs=epochs)
    sampler = BusySampler(device)

    def on_log(record: dict) -> None:
        if record["epoch"] >= 2:
            sampler.mark("warm")
        sampler.marks["end"] = time.perf_counter()

    started = time.perf_counter()
    result = train_lora(str(base), pairs, store, cfg, device=device, work_dir=work, log=on_log)
    total = time.perf_counter() - started
    epochs_log = result.training_logs["epochs"]
    per_epoch = result.training_logs["positive_pairs"] // batch * batch
    cold = per_epoch / epochs_log[0]["time_s"]
    warm = statistics.median(per_epoch / e["time_s"] for e in epochs_log[1:]) if len(epochs_log) > 1 else cold
    return {"cold_pairs_per_s": cold, "warm_pairs_per_s": warm, "warm_over_step": warm / step_pairs_per_s,
            "gpu_busy": sampler.busy("warm", "end"), "total_s": total,
            "micro_batch": result.training_logs["micro_batch_size"], "compiled": result.training_logs["compiled"],
            "images_on_device": result.training_logs["images_on_device"]}


def step_variants(device: torch.device) -> dict[str, tuple[str, dict]]:
    """The step's config choices other than their defaults on ``device``: name -> (figure, overrides)."""
    default_dropout = load_experiment_config().lora.dropout_on(device)
    other = 0.0 if default_dropout else 0.05
    variants = {f"lora_dropout {other:g}": (dropout_figure(other), {"lora": {"lora_dropout": other}})}
    if device.type == "cuda":  # in fp32 (elsewhere) both are no-ops
        variants["fp32 adapter inputs"] = ("lora_fp32_inputs_pairs_per_s", {"lora": {"fp32_inputs": True}})
        variants["cudnn_benchmark off"] = ("lora_cudnn_benchmark_off_pairs_per_s",
                                           {"training": {"cudnn_benchmark": False}})
    return variants


def dropout_figure(dropout: float) -> str:
    return "lora_dropout_pairs_per_s" if dropout else "lora_no_dropout_pairs_per_s"


@torch.inference_mode()
def forward_only(model, preprocessor, pixels: torch.Tensor, n_images: int, precision: str) -> float:
    """img/s of the image tower alone on one device-resident batch, ``n_images`` images in all."""
    from clipfood_assets.modeling.clip import compiled_region, dynamic_rows, towers_compiled

    device, compiled = pixels.device, towers_compiled(model)
    synchronize(device)
    started = time.perf_counter()
    with compiled_region("the forward pass") if compiled else contextlib.nullcontext():
        for _ in range(0, n_images, len(pixels)):
            normalized = preprocessor.normalize(pixels)
            with autocast_context(device, precision):
                features = model.get_image_features(
                    pixel_values=dynamic_rows(normalized) if compiled else normalized).pooler_output
            torch.nn.functional.normalize(features.float(), dim=-1)  # the embedding's last step, on the device
    synchronize(device)
    return (n_images // len(pixels) * len(pixels) or n_images) / (time.perf_counter() - started)


def evaluation(base: Path, lake, store, cache_dir: Path, device, batch: int, repeats: int, cfg) -> dict:
    """Image embedding from the warm store (one reader and STORE_READERS) and from JPEGs (store build +
    embedding) vs the forward pass, in the mode evaluation.compile picks for this gallery."""
    from clipfood_assets.modeling.embed import ImagePreprocessor, embed_images
    from clipfood_assets.modeling.evaluate import prepare_for_inference
    from clipfood_assets.modeling.image_store import PackedImageStore, update_image_store

    model, processor = load_clip(str(base), device)
    keys = store.keys()
    model = prepare_for_inference(model, cfg.evaluation, device, len(keys))
    pixels, preprocessor = store.get(keys[:batch]).to(device), ImagePreprocessor(processor)

    def warm(readers: int) -> float:
        _, stats = embed_images(model, processor, keys, store, batch_size=batch, device=device, readers=readers)
        return stats.items_per_s

    forward_only(model, preprocessor, pixels, len(keys), cfg.evaluation.precision), warm(1)  # compile, page cache
    forward = statistics.median(forward_only(model, preprocessor, pixels, len(keys), cfg.evaluation.precision)
                                for _ in range(repeats))
    one_reader = statistics.median(warm(1) for _ in range(repeats))
    several = statistics.median(warm(STORE_READERS) for _ in range(repeats))
    warm_rate = several if device.type == "cuda" else one_reader  # embed_images' default readers
    started = time.perf_counter()
    update_image_store(lake, processor, device=device, rebuild=True)
    built = time.perf_counter() - started
    with PackedImageStore.open(lake, processor, cache_dir=cache_dir / "cold") as cold_store:
        started = time.perf_counter()
        embed_images(model, processor, keys, cold_store, batch_size=batch, device=device)
        embedded = time.perf_counter() - started
    cold = len(keys) / (built + embedded)
    return {"forward_img_per_s": forward, "warm_img_per_s": warm_rate, "warm_over_forward": warm_rate / forward,
            "one_reader_over_forward": one_reader / forward, "readers_over_forward": several / forward,
            "cold_img_per_s": cold,
            "cold_over_forward": cold / forward,
            "store_build_img_per_s": len(keys) / built, "compiled": clip.towers_compiled(model)}


def compiled_forward(base: Path, store, device, batch: int, repeats: int, cfg, eager_img_per_s: float) -> dict:
    """The forward pass compiled: img/s, the first call's extra seconds (the compile), and the images +
    captions from which it pays (what evaluation.compile_min_items estimates)."""
    from clipfood_assets.modeling.embed import ImagePreprocessor
    from clipfood_assets.modeling.evaluate import prepare_for_inference

    model, processor = load_clip(str(base), device)
    keys = store.keys()
    on = cfg.evaluation.model_copy(update={"compile": "on"})
    model = prepare_for_inference(model, on, device, len(keys))
    pixels, preprocessor = store.get(keys[:batch]).to(device), ImagePreprocessor(processor)
    first = len(keys) / forward_only(model, preprocessor, pixels, len(keys), on.precision)
    rate = statistics.median(forward_only(model, preprocessor, pixels, len(keys), on.precision)
                             for _ in range(repeats))
    compile_s = first - len(keys) / rate
    saved_per_item = 1 / eager_img_per_s - 1 / rate
    # Only the image tower here: the text tower's compile is taken to cost as much and save in proportion.
    break_even = 2 * compile_s / saved_per_item if saved_per_item > 0 else None
    return {"img_per_s": rate, "compile_s": compile_s, "break_even_items": break_even}


def dynamo_figures() -> dict:
    """Graphs dynamo compiled, frames it gave up on (ran eager) plus recompile-limit hits, and graph breaks."""
    from torch._dynamo.utils import counters

    limit_hits = sum(n for reason, n in counters["unimplemented"].items() if "recompile limit" in reason.lower())
    return {"dynamo_graphs": counters["stats"]["unique_graphs"],
            "dynamo_fallbacks": counters["frames"]["total"] - counters["frames"]["ok"] + limit_hits,
            "dynamo_graph_breaks": sum(counters["graph_break"].values())}


def store_vs_jpeg_epoch(lake, store, processor, batch: int) -> float:
    """How many times faster one pass over every image is from the warm store than by decoding JPEGs."""
    from clipfood_assets.modeling.embed import ImagePreprocessor, default_decode_workers, iter_uint8_batches

    keys = store.keys()
    started = time.perf_counter()
    for chunk in range(0, len(keys), batch):
        store.get(keys[chunk:chunk + batch])
    from_store = time.perf_counter() - started
    preprocessor = ImagePreprocessor(processor)
    started = time.perf_counter()
    for _ in iter_uint8_batches(keys, lambda k: lake.get_bytes(FINE_TUNING_ZONE, k), preprocessor,
                                batch_size=batch, workers=default_decode_workers()):
        pass
    return (time.perf_counter() - started) / from_store


# --------------------------------------------------------------------------- main


class Check:
    """The figures, the table's rows, and sections that log their time and never stop the check."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.figures: dict = {"device": describe_device(device)}
        self.rows: list[tuple[str, str, str]] = []
        self.wall = time.perf_counter()

    def section(self, name: str, fn):
        started = time.perf_counter()
        try:
            out = fn()
            shown = out[-1] if isinstance(out, tuple) else out
            shown = shown if isinstance(shown, (dict, float, int, str)) else type(shown).__name__
            log(f"[{time.perf_counter() - self.wall:6.1f} s] {name}: {shown} ({time.perf_counter() - started:.1f} s)")
            return out
        except Exception:  # one broken section must not cost the others' figures
            log(f"[{time.perf_counter() - self.wall:6.1f} s] {name} FAILED:\n{traceback.format_exc()}")
            return None

    def row(self, what: str, value: str, note: str = "") -> None:
        self.rows.append((what, value, note))

    def print(self, model: str) -> None:
        log(f"\ndevice: {self.figures['device']}; model {model}; {time.perf_counter() - self.wall:.0f} s in all")
        width = max((len(r[0]) for r in self.rows), default=10)
        for what, value, note in self.rows:
            log(f"  {what:<{width}}  {value:>18}  {note}")
        keys = (*FIGURES, *CUDA_FIGURES, *DYNAMO_FIGURES, "store_epoch_speedup")
        log(json.dumps({key: _rounded(self.figures.get(key)) for key in keys}))


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="the tiny model on the CPU (what CI can run)")
    parser.add_argument("--profile", type=Path, default=None, help="write a torch.profiler table of 3 LoRA steps here")
    parser.add_argument("--device", default=None, help="override the device (a dry run of the full check: cpu)")
    parser.add_argument("--images", type=int, default=None, help="override the number of images")
    parser.add_argument("--batches", default=None, help="override the two step batches, e.g. 8,16")
    parser.add_argument("--steps", type=int, default=None, help="override the timed steps")
    parser.add_argument("--epochs", type=int, default=None, help="override train_lora's epochs")
    parser.add_argument("--compile-backend", default=None,
                        help="compile every training and evaluation with this torch.compile backend (eager or "
                             "aot_eager count dynamo's graphs on a CPU in seconds)")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device or ("cpu" if args.small else "cuda"))
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --small for the CPU check")
    return args


def _profile(args: argparse.Namespace) -> dict:
    profile = dict(PROFILES["small" if args.small else "full"])
    for key, value in (("images", args.images), ("timed_steps", args.steps), ("e2e_epochs", args.epochs)):
        if value:
            profile[key] = value
    if args.batches:
        profile["step_batches"] = tuple(int(b) for b in args.batches.split(","))
    return profile


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    profile, device = _profile(args), args.device
    if args.compile_backend:
        clip.COMPILE_BACKEND, COMPILE["setting"] = args.compile_backend, "on"
    configure_cpu_threads(device)
    check = Check(device)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        os.environ.setdefault("CLIPFOOD_CACHE_DIR", str(work / "cache"))
        cores = os.cpu_count() or 2
        lake, pairs = check.section("data", lambda: make_lake(work, profile["images"], profile["captions_per_image"],
                                                              max(1, min(16, cores))))
        base = check.section("base model", lambda: make_base_model(profile["model"], work))
        from transformers import CLIPProcessor

        from clipfood_assets.modeling.image_store import PackedImageStore, update_image_store

        processor = CLIPProcessor.from_pretrained(str(base))
        build = check.section("store build (cold)", lambda: update_image_store(lake, processor, device=device))
        with PackedImageStore.open(lake, processor) as store:
            log(f"  {len(store)} images, {build.decode_images_per_s if build else float('nan'):.0f} img/s decoded; "
                f"{len(pairs)} pair rows")
            _training_sections(check, profile, base, pairs, store, work, args.profile)
            _evaluation_sections(check, profile, base, lake, store, work)
            ratio = check.section("store epoch vs JPEG epoch", lambda: store_vs_jpeg_epoch(lake, store, processor, 64))
            if ratio:
                check.figures["store_epoch_speedup"] = ratio
                check.row("one pass over the images: warm store vs JPEG decoding", f"{ratio:,.1f}x faster")
    check.figures.update(dynamo_figures())
    check.print(profile["model"])
    return 0 if all(check.figures.get(key) is not None for key in ("lora_pairs_per_s", "eval_forward_img_per_s")) else 1


def _training_sections(check: Check, profile: dict, base: Path, pairs, store, work: Path,
                       profile_dir: Path | None) -> float | None:
    """The bare LoRA step at both batches and auto, the full fine-tune, the step's choices and train_lora
    end to end; returns the big batch's pairs/s (None when its section failed)."""
    device, (small_batch, big_batch) = check.device, profile["step_batches"]
    per_pair = check.section("FLOPs per pair", lambda: flops_per_pair(base, pairs, store, device, work / "flops", 32))
    steps, best_run = {}, None
    for batch in (big_batch, small_batch, "auto"):
        def measure(batch=batch):
            run = start_run(base, pairs, store, training_config(batch, big_batch if batch == "auto" else batch),
                            device, work / f"step_{batch}")
            return run, bare_step(run, profile["timed_steps"])
        out = check.section(f"LoRA step, batch {batch}", measure)
        if out is None:
            continue
        run, steps[batch] = out
        if batch == big_batch:
            best_run = run
            if profile_dir is not None:
                check.section("profile", lambda run=run: write_profile(run, profile_dir))
        else:
            run.close()
    _step_figures(check, steps, per_pair, big_batch)
    if best_run is not None:
        _full_fine_tune_section(check, base, best_run, profile["timed_steps"], big_batch)
    step_rate = steps.get(big_batch, {}).get("pairs_per_s")
    if step_rate:
        _variant_sections(check, base, pairs, store, work, big_batch, profile["timed_steps"], step_rate)
        _end_to_end_section(check, base, pairs, store, work, big_batch, profile["e2e_epochs"], step_rate)
    return step_rate


def _step_figures(check: Check, steps: dict, per_pair: float | None, big_batch: int) -> None:
    peak = peak_tflops(check.device)
    best = max((b for b in steps if b != "auto"), key=lambda b: steps[b]["pairs_per_s"], default=None)
    if best is not None:
        check.figures["lora_pairs_per_s"] = steps[best]["pairs_per_s"]
        if per_pair and peak:
            check.figures["lora_mfu"] = steps[best]["pairs_per_s"] * per_pair / (peak * 1e12)
    if "auto" in steps:
        check.figures["auto_pairs_per_s"] = steps["auto"]["pairs_per_s"]
    if big_batch in steps:  # the default dropout's figure is the default step's
        default_dropout = load_experiment_config().lora.dropout_on(check.device)
        check.figures[dropout_figure(default_dropout)] = steps[big_batch]["pairs_per_s"]
    for batch, result in steps.items():
        tflops = result["pairs_per_s"] * per_pair / 1e12 if per_pair else float("nan")
        check.row(f"LoRA step, batch {batch} (micro {result['micro_batch']})", f"{result['pairs_per_s']:,.0f} pairs/s",
                  f"{tflops:.1f} TFLOP/s, peak {result['peak_gib']:.1f} GiB")


def _full_fine_tune_section(check: Check, base: Path, run, timed: int, big_batch: int) -> None:
    try:
        full = check.section("full fine-tune reference", lambda: full_fine_tune(base, run, timed))
    finally:
        run.close()
        if check.device.type == "cuda":
            torch.cuda.empty_cache()
    if full:
        check.figures["full_ft_pairs_per_s"] = full["pairs_per_s"]
        check.row(f"full fine-tune, batch {big_batch} (reference)", f"{full['pairs_per_s']:,.0f} pairs/s",
                  f"LoRA / full = {check.figures.get('lora_pairs_per_s', 0) / full['pairs_per_s']:.2f}")


def _variant_sections(check: Check, base: Path, pairs, store, work: Path, big_batch: int, timed: int,
                      default_rate: float) -> None:
    """Each of the step's choices turned the other way, at the big batch, against the default step."""
    for name, (figure, overrides) in step_variants(check.device).items():
        def measure(overrides=overrides, name=name):
            cfg = training_config(big_batch, big_batch, overrides=overrides)
            run = start_run(base, pairs, store, cfg, check.device, work / f"step_{name.replace(' ', '_')}")
            try:
                return bare_step(run, timed)
            finally:
                run.close()
        result = check.section(f"LoRA step, batch {big_batch}, {name}", measure)
        if result:
            check.figures[figure] = result["pairs_per_s"]
            check.row(f"LoRA step, batch {big_batch}, {name}", f"{result['pairs_per_s']:,.0f} pairs/s",
                      f"{result['pairs_per_s'] / default_rate:.2f}x the default step")


def _end_to_end_section(check: Check, base: Path, pairs, store, work: Path, batch: int, epochs: int,
                        step_rate: float) -> None:
    e2e = check.section("train_lora end to end", lambda: train_end_to_end(
        base, pairs, store, check.device, work / "e2e", batch, epochs, step_rate))
    if e2e:
        check.figures["train_warm_over_step"] = e2e["warm_over_step"]
        check.figures["gpu_busy"] = e2e["gpu_busy"]
        check.row(f"train_lora, batch {batch} (micro {e2e['micro_batch']}): cold epoch",
                  f"{e2e['cold_pairs_per_s']:,.0f} pairs/s", f"whole call {e2e['total_s']:.0f} s")
        busy = f"{e2e['gpu_busy']:.0%}" if e2e["gpu_busy"] is not None else "not sampled"
        check.row("train_lora warm epochs", f"{e2e['warm_pairs_per_s']:,.0f} pairs/s",
                  f"{e2e['warm_over_step']:.0%} of the bare step, GPU busy {busy}")


def _evaluation_sections(check: Check, profile: dict, base: Path, lake, store, work: Path) -> None:
    device, batch, repeats = check.device, profile["eval_batch"], profile["repeats"]
    cfg = training_config("auto", 32)
    ev = check.section("evaluation", lambda: evaluation(base, lake, store, work / "cache", device, batch, repeats, cfg))
    if not ev:
        return
    check.figures.update(eval_forward_img_per_s=ev["forward_img_per_s"], eval_warm_over_forward=ev["warm_over_forward"],
                         eval_one_reader_over_forward=ev["one_reader_over_forward"],
                         eval_readers_over_forward=ev["readers_over_forward"],
                         eval_cold_img_per_s=ev["cold_img_per_s"], eval_cold_over_forward=ev["cold_over_forward"])
    mode = "compiled" if ev["compiled"] else "eager"
    check.row(f"evaluation forward only, batch {batch} ({mode})", f"{ev['forward_img_per_s']:,.0f} img/s", "the limit")
    check.row("evaluation from the warm store", f"{ev['warm_img_per_s']:,.0f} img/s",
              f"{ev['warm_over_forward']:.0%} of forward only; one reader {ev['one_reader_over_forward']:.0%}, "
              f"{STORE_READERS} readers {ev['readers_over_forward']:.0%}")
    check.row("evaluation cold from JPEGs (store build + embed)", f"{ev['cold_img_per_s']:,.0f} img/s",
              f"{ev['cold_over_forward']:.0%} of forward only; build {ev['store_build_img_per_s']:,.0f} img/s")
    if device.type != "cuda" and COMPILE["setting"] != "on":
        return  # inductor on a CPU takes minutes to compile and says nothing about a GPU
    compiled = check.section("evaluation forward compiled", lambda: compiled_forward(
        base, store, device, batch, repeats, cfg, ev["forward_img_per_s"]))
    if compiled:
        check.figures.update(eval_compiled_forward_img_per_s=compiled["img_per_s"],
                             eval_compile_s=compiled["compile_s"],
                             eval_compile_break_even_items=compiled["break_even_items"])
        pays = compiled["break_even_items"]
        check.row(f"evaluation forward only, batch {batch}, compiled", f"{compiled['img_per_s']:,.0f} img/s",
                  f"compile {compiled['compile_s']:.1f} s: pays from "
                  f"{f'{pays:,.0f} images + captions' if pays else 'never (not faster)'}")


def write_profile(run, directory: Path) -> str:
    """torch.profiler over 3 steps of ``run``: the top operators by device (or CPU) time."""
    from torch.profiler import ProfilerActivity, profile

    from clipfood_assets.modeling.batching import epoch_batches

    directory.mkdir(parents=True, exist_ok=True)
    effective = run.cfg.training.effective_batch_size
    step = run.builder.build(epoch_batches(len(run.pairs), effective, 0, 0)[0])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            run.optimizer_step(step)
        synchronize(run.device)
    sort = "cuda_time_total" if run.device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=25)
    (directory / "profile.txt").write_text(table, encoding="utf-8")
    return f"{directory / 'profile.txt'}"


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4 if abs(value) < 10 else 1)
    return value


if __name__ == "__main__":
    sys.exit(main())
