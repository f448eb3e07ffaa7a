"""LoRA fine-tuning of CLIP on positive pairs, with labelled negatives and resumable checkpoints.

One optimizer step sees ``batch_size x gradient_accumulation_steps`` positive pairs; with
``training.accumulation = feature_cache`` every pair is contrasted with all the others
(:class:`~clipfood_assets.modeling.losses.FeatureCacheAccumulator`), pairs of the same
recipe are not negatives, and the labelled negative captions of the batch's images join
the image->text denominator.  Images are decoded once per run into a uint8 cache by a
thread pool that runs ahead of the loop, and kept on disk across runs
(:mod:`clipfood_assets.modeling.image_cache`), so a later or resumed run reads tensors.  A run resumes from the latest complete
checkpoint in ``work_dir/checkpoints`` and ends with the same weights as an uninterrupted run.
Under ``torchrun`` each process encodes a slice of every step and contrasts against the
gathered global batch (:mod:`clipfood_assets.modeling.distributed`): same result as one process.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from clipfood_assets.modeling.checkpoint import latest_checkpoint, load_best_weights, load_checkpoint, save_checkpoint
from clipfood_assets.modeling.clip import autocast_context, describe_device, load_clip, resolve_precision
from clipfood_assets.modeling.config import ExperimentConfig
from clipfood_assets.modeling.distributed import (
    DistributedWorld,
    assert_same_on_all_ranks,
    average_gradients,
    broadcast_parameters,
    gather_contrastive_batch,
    local_micro_batch_size,
    shard_bounds,
)
from clipfood_assets.modeling.efficiency import configure_cpu_threads, peak_memory, reset_peak_memory
from clipfood_assets.modeling.embed import ImagePreprocessor, text_max_length
from clipfood_assets.modeling.image_cache import ImageCacheOption
from clipfood_assets.modeling.losses import (
    FeatureCacheAccumulator,
    accumulate_per_micro_batch,
    clamp_logit_scale_,
    contrastive_loss,
    negatives_per_pair,
)
from clipfood_assets.modeling.lora import (
    apply_lora,
    check_quantization,
    count_parameters,
    load_quantized_clip,
    logit_scale_parameter,
    save_adapters,
)

logger = logging.getLogger(__name__)

UNKNOWN_RECIPE = "\x00unknown"  # recipe of a negative caption that matches no positive caption


@dataclass
class TrainResult:
    """What a training run produced and what it cost."""

    adapter_dir: Path
    training_logs: dict
    trainable_parameters: int
    total_parameters: int
    peak_memory_bytes: int
    peak_memory_kind: str
    training_time_s: float
    samples_per_s: float
    device: str


# --------------------------------------------------------------------------- data


@dataclass
class TrainingPairs:
    """Positive pairs (the contrastive batch) and the labelled negative captions of each image."""

    recipe_ids: np.ndarray
    image_keys: np.ndarray
    captions: np.ndarray
    negatives_by_image: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.recipe_ids)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for column in (self.recipe_ids, self.image_keys, self.captions):
            digest.update("\x1f".join(column.tolist()).encode("utf-8"))
        for key in sorted(self.negatives_by_image):
            digest.update(repr((key, self.negatives_by_image[key])).encode("utf-8"))
        return digest.hexdigest()


def prepare_training_pairs(train_pairs: pd.DataFrame, *, use_labelled_negatives: bool = True) -> TrainingPairs:
    """Split labelled rows into positives (label 1) and per-image negative captions (label 0).

    A negative caption's recipe is taken from a ``caption_recipe_id`` / ``negative_recipe_id``
    column when present, else from the positive pair with the same caption; negatives that
    turn out to be the image's own recipe are dropped (they are not negatives).
    """
    missing = {"recipe_id", "image_key", "caption"} - set(train_pairs.columns)
    if missing:
        raise ValueError(f"training pairs lack columns {sorted(missing)}")
    frame = train_pairs.dropna(subset=["recipe_id", "image_key", "caption"])
    frame = frame.assign(recipe_id=frame["recipe_id"].astype(str), image_key=frame["image_key"].astype(str),
                         caption=frame["caption"].astype(str))
    if "label" in frame.columns:
        labels = pd.to_numeric(frame["label"], errors="coerce")
        if labels.isna().any() or not labels.isin([0, 1]).all():
            bad = frame["label"][labels.isna() | ~labels.isin([0, 1])].head(3).tolist()
            raise ValueError(f"label must be 0 or 1, got {bad}")
    else:
        labels = pd.Series(1, index=frame.index)
    positives = frame[labels == 1].drop_duplicates(["recipe_id", "image_key", "caption"])
    positives = positives.sort_values(["recipe_id", "image_key", "caption"], kind="stable")
    if len(positives) < 2:
        raise ValueError(f"need at least 2 positive pairs to train contrastively, got {len(positives)}")

    negatives_by_image: dict[str, list[tuple[str, str]]] = {}
    negatives = frame[labels == 0]
    if use_labelled_negatives and not negatives.empty:
        recipe_column = next((c for c in ("caption_recipe_id", "negative_recipe_id") if c in negatives.columns), None)
        if recipe_column is not None:
            caption_recipes = negatives[recipe_column].astype(str)
        else:
            owners = positives.drop_duplicates("caption").set_index("caption")["recipe_id"]
            shared = positives.groupby("caption")["recipe_id"].nunique()
            owners = owners[shared[owners.index] == 1]  # a caption of several recipes identifies none
            caption_recipes = negatives["caption"].map(owners).fillna(UNKNOWN_RECIPE)
        image_recipe = positives.drop_duplicates("image_key").set_index("image_key")["recipe_id"]
        own_recipe = negatives["image_key"].map(image_recipe).fillna(negatives["recipe_id"])
        kept = negatives.assign(caption_recipe=caption_recipes)[caption_recipes.to_numpy() != own_recipe.to_numpy()]
        kept = kept[kept["image_key"].isin(image_recipe.index)].drop_duplicates(["image_key", "caption"])
        for key, group in kept.sort_values(["image_key", "caption"], kind="stable").groupby("image_key", sort=True):
            negatives_by_image[str(key)] = list(zip(group["caption"], group["caption_recipe"], strict=True))
    return TrainingPairs(
        recipe_ids=positives["recipe_id"].to_numpy(dtype=object),
        image_keys=positives["image_key"].to_numpy(dtype=object),
        captions=positives["caption"].to_numpy(dtype=object),
        negatives_by_image=negatives_by_image,
    )


def epoch_batches(n_pairs: int, batch: int, seed: int, epoch: int, min_pairs: int = 2) -> list[np.ndarray]:
    """Pair indices of each optimizer step of ``epoch``: a seeded permutation cut into batches.

    A trailing batch of fewer than ``min_pairs`` pairs is dropped (one pair has no negative
    to learn from; N processes need at least one pair each).
    """
    order = np.random.default_rng([seed, epoch]).permutation(n_pairs)
    batches = [order[i:i + batch] for i in range(0, n_pairs, batch)]
    return [b for b in batches if len(b) >= max(2, min_pairs)]


@dataclass
class MicroBatch:
    pixels: torch.Tensor  # uint8 [m, 3, H, W]
    text_ids: torch.Tensor  # [m + n, L]: the m positive captions, then n labelled negatives
    text_mask: torch.Tensor
    n_pairs: int
    recipe_ids: list[str]
    negative_recipe_ids: list[str]


class ImageCache:
    """uint8 images decoded once per run by a thread pool, submitted in the order first needed."""

    def __init__(self, load_image: Callable[[str], bytes], preprocessor: ImagePreprocessor, workers: int) -> None:
        self._load = load_image
        self._preprocessor = preprocessor
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="train-image")
        self._futures: dict[str, Future] = {}

    def _decode(self, key: str) -> torch.Tensor:
        try:
            return self._preprocessor.to_uint8(self._load(key))
        except Exception as exc:
            raise ValueError(f"cannot read training image {key!r}: {exc}") from exc

    def prefetch(self, keys: Sequence[str]) -> None:
        for key in keys:
            if key not in self._futures:
                self._futures[key] = self._pool.submit(self._decode, key)

    def get(self, keys: Sequence[str]) -> torch.Tensor:
        self.prefetch(keys)
        return torch.stack([self._futures[k].result() for k in keys])

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class TokenCache:
    """Token ids of every caption, computed once; batches are padded to their longest caption."""

    def __init__(self, tokenizer, captions: Sequence[str], max_length: int) -> None:
        unique = list(dict.fromkeys(captions))
        encoded = tokenizer(unique, padding=False, truncation=True, max_length=max_length)["input_ids"]
        self._ids = dict(zip(unique, encoded, strict=True))
        pad = tokenizer.pad_token_id
        self._pad = int(pad if pad is not None else tokenizer.eos_token_id)

    def batch(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self._ids[c] for c in captions]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids, mask


def _micro_batches(
    batch: np.ndarray, pairs: TrainingPairs, micro: int, images: ImageCache, tokens: TokenCache, with_negatives: bool,
    seen_images: set[str] | None = None,
) -> list[MicroBatch]:
    """Cut one step's pairs into micro-batches; each image's negatives go with its first occurrence.

    ``seen_images``: images of the step met before ``batch`` (other processes' earlier slices).
    """
    seen_images = set(seen_images or ())
    out = []
    for start in range(0, len(batch), micro):
        idx = batch[start:start + micro]
        keys = [str(k) for k in pairs.image_keys[idx]]
        captions = [str(c) for c in pairs.captions[idx]]
        negative_captions, negative_recipes = [], []
        if with_negatives:
            for key in keys:
                if key in seen_images:
                    continue
                seen_images.add(key)
                for caption, recipe in pairs.negatives_by_image.get(key, ()):
                    negative_captions.append(caption)
                    negative_recipes.append(recipe)
        ids, mask = tokens.batch(captions + negative_captions)
        out.append(MicroBatch(images.get(keys), ids, mask, len(idx), [str(r) for r in pairs.recipe_ids[idx]],
                              negative_recipes))
    return out


def _step_negative_recipes(batch: np.ndarray, pairs: TrainingPairs) -> list[str]:
    """Recipes of the step's labelled negatives, each image's with its first occurrence."""
    seen: set[str] = set()
    recipes: list[str] = []
    for key in pairs.image_keys[batch]:
        if key not in seen:
            seen.add(key)
            recipes.extend(recipe for _, recipe in pairs.negatives_by_image.get(key, ()))
    return recipes


@dataclass(frozen=True)
class _StepSharding:
    """Which pairs of each global step this process encodes (all of them in one process)."""

    world: DistributedWorld
    micro_batch: int  # pairs per forward pass in this process

    def local(self, batch: np.ndarray) -> np.ndarray:
        """This process's contiguous slice of ``batch`` (slices in rank order make the batch)."""
        start, stop = shard_bounds(len(batch), self.world.rank, self.world.world_size)
        return batch[start:stop]

    def images_before(self, batch: np.ndarray, pairs: TrainingPairs) -> set[str]:
        """Images of ``batch`` in earlier processes' slices (their negatives are theirs)."""
        start, _ = shard_bounds(len(batch), self.world.rank, self.world.world_size)
        return {str(k) for k in pairs.image_keys[batch[:start]]}

    def local_keys(self, batches: Sequence[np.ndarray], pairs: TrainingPairs) -> list[str]:
        return [str(k) for b in batches for k in pairs.image_keys[self.local(b)]]


def _recipe_code_table(pairs: TrainingPairs) -> dict[str, int]:
    """int64 code of every recipe id (pairs' and negatives'): a sorted index, identical on every process."""
    recipes = set(pairs.recipe_ids.tolist())
    recipes.update(recipe for negatives in pairs.negatives_by_image.values() for _, recipe in negatives)
    return {recipe: code for code, recipe in enumerate(sorted(recipes))}


def _step_seed(seed: int, step: int, rank: int) -> int:
    # Each process's dropout stream: decorrelated across processes, a function of the step so
    # that a resumed run (which restores rank 0's RNG state everywhere) reseeds it exactly.
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0]) >> 1


# --------------------------------------------------------------------------- schedule


def format_progress(entry: dict) -> str:
    """One human line for a training log entry (a step record plus ``total_steps`` and ``epochs``):
    ``step 250/2910 (9 %) · epoch 3/30 · loss 2.41 · 38 pairs/s · ETA 6 min``."""
    step, total = entry["step"], max(1, entry["total_steps"])
    per_step = entry["elapsed_s"] / step if step else 0.0
    eta_s = per_step * (total - step)
    eta = f"{eta_s / 60:.0f} min" if eta_s >= 90 else f"{eta_s:.0f} s"
    return (f"step {step}/{total} ({100 * step / total:.0f} %) · epoch {entry['epoch']}/{entry['epochs']} · "
            f"loss {entry['loss']:.3g} · {entry['samples_per_s']:.0f} pairs/s · ETA {eta}")


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Learning-rate multiplier after ``step`` optimizer steps: linear warm-up, then the schedule."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@contextmanager
def _deterministic():
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _run_fingerprint(base_model: str, cfg: ExperimentConfig, pairs: TrainingPairs,
                     validation_pairs: pd.DataFrame | None = None) -> str:
    # Checkpointing knobs do not change the result; everything else does.
    training = cfg.training.model_copy(update={"checkpoint_every_steps": 1, "keep_checkpoints": 1, "num_workers": 0})
    stable = cfg.model_copy(update={"training": training})
    # Gradient checkpointing trades compute for memory, same result: left out of the text, so
    # runs checkpointed before the option existed still resume and it may be toggled mid-run.
    text = yaml.safe_dump(stable.model_dump(mode="json", exclude={"training": {"gradient_checkpointing"}}),
                          sort_keys=False, default_flow_style=False)
    digest = hashlib.sha256(text.encode("utf-8"))
    digest.update(str(base_model).encode("utf-8"))
    digest.update(pairs.fingerprint().encode("utf-8"))
    if validation_pairs is not None and len(validation_pairs):
        rows = validation_pairs[["recipe_id", "image_key", "caption"]].astype(str).sort_values(["image_key", "caption"])
        digest.update(pd.util.hash_pandas_object(rows, index=False).values.tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- training


def enable_gradient_checkpointing(model) -> None:
    """Recompute each encoder layer's activations in the backward pass (call on the base CLIPModel).

    Non-reentrant checkpointing: works with a frozen base (the inputs need no grad, unlike
    the reentrant variant) and replays dropout with the saved RNG state, so the gradients
    equal those of a plain run, also under the feature-cache accumulator's no-grad pass.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    enabled = getattr(model, "is_activation_checkpointing", None)
    if not (enabled if enabled is not None else model.is_gradient_checkpointing):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")


def train_lora(
    base_model: str,
    train_pairs: pd.DataFrame,
    load_image: Callable[[str], bytes],
    cfg: ExperimentConfig,
    *,
    device: torch.device | str,
    work_dir: Path,
    on_checkpoint: Callable[[Path], None] | None = None,
    log: Callable[[dict], None] | None = None,
    world: DistributedWorld | None = None,
    image_cache: ImageCacheOption = None,
    validation_pairs: pd.DataFrame | None = None,
) -> TrainResult:
    """Fine-tune LoRA adapters on ``train_pairs`` and save them to ``work_dir/adapters``.

    ``train_pairs`` has ``recipe_id, image_key, caption`` and optionally ``label`` (1
    positive, 0 labelled negative: an image with another recipe's caption).  ``log`` gets
    every step's record; ``on_checkpoint`` every complete checkpoint directory (both may
    raise to stop the run, which then resumes from the latest checkpoint when called again
    with the same arguments).  Raises ValueError when the checkpoints in ``work_dir`` belong
    to another configuration or dataset.

    ``world`` (default: the initialised torch.distributed group, else one process): with N
    processes each encodes a slice of every step, the loss is over the gathered global batch
    and gradients are averaged, so the run computes what one process computes.  Every process
    calls this with the same arguments; only rank 0 writes checkpoints and adapters and calls
    ``log`` and ``on_checkpoint``.

    ``image_cache``: the persistent preprocessed-image cache (None: on unless
    ``CLIPFOOD_IMAGE_CACHE=0``; False: off; a path: that directory).

    ``validation_pairs`` (``recipe_id, image_key, caption``, recipes disjoint from training):
    recipe-level retrieval both ways every ``training.eval_every_epochs`` epochs, logged as
    ``training_logs["validation"]``; with ``training.early_stopping_patience`` training stops
    after that many validations without a better text→image R@1 (MRR breaks ties), and with
    ``training.final_adapters: best`` the saved adapters are the best validation epoch's.
    """
    device = torch.device(device)
    work_dir = Path(work_dir)
    training = cfg.training
    world = world if world is not None else DistributedWorld.current()
    if world.is_distributed and training.accumulation != "feature_cache":
        raise ValueError("training.accumulation per_micro_batch (the seed's ablation) runs in one process only; "
                         "use feature_cache with several processes")
    sharding = _StepSharding(world, local_micro_batch_size(training.batch_size, world))
    min_pairs = max(2, world.world_size)
    precision = resolve_precision(device, training.precision)
    with_negatives = training.use_labelled_negatives and training.loss != "clip"
    pairs = prepare_training_pairs(train_pairs, use_labelled_negatives=with_negatives)
    fingerprint = _run_fingerprint(base_model, cfg, pairs, validation_pairs)
    # Every process must train on the same data and config, or the recipe codes and shards disagree.
    assert_same_on_all_ranks(int(fingerprint[:15], 16), world, "the run fingerprint (config, base model, data)", device)
    recipe_codes = _recipe_code_table(pairs)
    configure_cpu_threads(device)

    with _deterministic():
        _seed_everything(cfg.seed)
        torch.backends.cudnn.benchmark = False
        check_quantization(cfg.peft.quantization, device)
        model, processor = load_clip(base_model, device)
        if cfg.peft.quantization == "4bit":  # QLoRA: the frozen base in NF4 (CUDA; checked above)
            model = load_quantized_clip(base_model, device)
        if training.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        model = apply_lora(model, cfg.lora, train_logit_scale=training.train_logit_scale, method=cfg.peft.method)
        logit_scale = logit_scale_parameter(model)
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        trainable_count, total_count = count_parameters(model)

        decay = [p for n, p in trainable.items() if p is not logit_scale]
        groups = [{"params": decay, "weight_decay": training.weight_decay}]
        if logit_scale.requires_grad:  # no weight decay on the temperature, as open_clip
            groups.append({"params": [logit_scale], "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, lr=training.learning_rate, fused=device.type == "cuda")

        effective = training.effective_batch_size
        steps_per_epoch = len(epoch_batches(len(pairs), effective, cfg.seed, 0, min_pairs))
        total_steps = steps_per_epoch * training.epochs
        warmup_steps = math.ceil(training.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, training.scheduler)
        )
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

        state = {
            "step": 0, "epoch": 0, "batch_in_epoch": 0, "elapsed_s": 0.0, "pairs_seen": 0,
            "epoch_loss_sum": 0.0, "epoch_steps": 0, "epoch_time_s": 0.0,
            "negatives_sum": 0.0, "fingerprint": fingerprint,
            "logs": {"steps": [], "epochs": [], "validation": []}, "resumed_from_step": None,
            "best": None, "evals_since_best": 0, "stopped_early_at_epoch": None,
        }
        best_weights: dict[str, torch.Tensor] = {}
        checkpoints = work_dir / "checkpoints"
        latest = latest_checkpoint(checkpoints)
        if latest is not None:
            saved = load_checkpoint(latest, trainable=trainable, optimizer=optimizer, scheduler=scheduler,
                                    scaler=scaler if scaler.is_enabled() else None)
            if saved.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"checkpoints in {checkpoints} come from another configuration or dataset; "
                    "delete them or use another work_dir"
                )
            state = saved
            state["resumed_from_step"] = saved["step"]
            best_weights.update(load_best_weights(latest))
        broadcast_parameters(trainable.values(), world)  # replicas start from rank 0's weights
        world.barrier()  # every process has read the checkpoint before rank 0 writes or prunes any

        tokenizer = processor.tokenizer
        tokens = TokenCache(
            tokenizer,
            list(pairs.captions) + [c for negs in pairs.negatives_by_image.values() for c, _ in negs],
            text_max_length(model, tokenizer),
        )
        preprocessor = ImagePreprocessor(processor, image_cache=image_cache)
        images = ImageCache(load_image, preprocessor, training.num_workers)
        images.prefetch(sharding.local_keys(epoch_batches(len(pairs), effective, cfg.seed, state["epoch"], min_pairs),
                                            pairs))

        def encode(micro: MicroBatch) -> dict[str, torch.Tensor]:
            pixels = preprocessor.normalize(micro.pixels.to(device, non_blocking=True))
            with autocast_context(device, precision):
                image = model.get_image_features(pixel_values=pixels).pooler_output
                text = model.get_text_features(
                    input_ids=micro.text_ids.to(device), attention_mask=micro.text_mask.to(device)
                ).pooler_output
            return {"image": image, "text": text[: micro.n_pairs], "negative": text[micro.n_pairs:]}

        def loss_fn(features: dict[str, torch.Tensor], micros: Sequence[MicroBatch]) -> torch.Tensor:
            image, text, negative = features["image"], features["text"], features["negative"]
            recipe_ids = [r for m in micros for r in m.recipe_ids]
            negative_recipe_ids = [r for m in micros for r in m.negative_recipe_ids]
            if world.is_distributed:  # contrast against every process's pairs and negatives
                step = gather_contrastive_batch(
                    image, text, negative,
                    torch.tensor([recipe_codes[r] for r in recipe_ids], dtype=torch.long),
                    torch.tensor([recipe_codes[r] for r in negative_recipe_ids], dtype=torch.long),
                    world,
                )
                image, text, negative = step.image, step.text, step.negative
                recipe_ids, negative_recipe_ids = step.pair_codes.cpu().numpy(), step.negative_codes.cpu().numpy()
            return contrastive_loss(
                image, text, logit_scale,
                recipe_ids=recipe_ids,
                negative_text_emb=negative,
                negative_recipe_ids=negative_recipe_ids,
                mask_same_recipe=training.mask_same_recipe, kind=training.loss,
            )

        validate = None
        if validation_pairs is not None and len(validation_pairs):
            from clipfood_assets.modeling.evaluate import validation_metrics

            def validate() -> dict[str, dict[str, float]]:
                model.eval()
                try:
                    with torch.no_grad():
                        return validation_metrics(model, processor, validation_pairs, load_image, cfg=cfg,
                                                  device=device)
                finally:
                    model.train()

        accumulator = FeatureCacheAccumulator(encode, loss_fn)
        scale_loss = scaler.scale if scaler.is_enabled() else None
        reset_peak_memory(device)
        model.train()
        try:
            _train_epochs(
                model=model, pairs=pairs, cfg=cfg, state=state, images=images, tokens=tokens,
                with_negatives=with_negatives, accumulator=accumulator, encode=encode, loss_fn=loss_fn,
                scale_loss=scale_loss, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                trainable=trainable, logit_scale=logit_scale, checkpoints=checkpoints, device=device,
                on_checkpoint=on_checkpoint, log=log, sharding=sharding, min_pairs=min_pairs,
                validate=validate, best_weights=best_weights,
            )
        finally:
            images.close()

        model.eval()
        if training.final_adapters == "best" and best_weights:
            with torch.no_grad():
                for name, parameter in trainable.items():
                    parameter.copy_(best_weights[name].to(parameter.device))
        adapter_dir = work_dir / "adapters"
        if world.is_main:
            save_adapters(model, adapter_dir, logit_scale)
        world.barrier()  # the adapters exist for everyone once this returns
        peak, kind = peak_memory(device)

    steps = max(1, len(state["logs"]["steps"]))
    training_logs = {
        "steps": state["logs"]["steps"],
        "epochs": state["logs"]["epochs"],
        "total_time_s": state["elapsed_s"],
        "negatives_per_pair": state["negatives_sum"] / steps,
        "effective_batch_size": effective,
        "micro_batch_size": training.batch_size,
        "world_size": world.world_size,
        "accumulation": training.accumulation,
        "loss": training.loss,
        "precision": precision,
        "total_steps": total_steps,
        "resumed_from_step": state["resumed_from_step"],
        "labelled_negative_images": len(pairs.negatives_by_image),
        "positive_pairs": len(pairs),
        "validation": state["logs"].get("validation", []),
        "best_validation": state.get("best"),
        "stopped_early_at_epoch": state.get("stopped_early_at_epoch"),
        "final_adapters": training.final_adapters if best_weights else "last",
    }
    return TrainResult(
        adapter_dir=adapter_dir,
        training_logs=training_logs,
        trainable_parameters=trainable_count,
        total_parameters=total_count,
        peak_memory_bytes=peak,
        peak_memory_kind=kind,
        training_time_s=state["elapsed_s"],
        samples_per_s=state["pairs_seen"] / state["elapsed_s"] if state["elapsed_s"] > 0 else 0.0,
        device=describe_device(device),
    )


def _train_epochs(
    *, model, pairs, cfg, state, images, tokens, with_negatives, accumulator, encode, loss_fn, scale_loss,
    optimizer, scheduler, scaler, trainable, logit_scale, checkpoints, device, on_checkpoint, log,
    sharding, min_pairs, validate=None, best_weights=None,
) -> None:
    """The optimisation loop from ``state``'s position to the end; mutates ``state`` (and
    ``best_weights``, the trainable tensors of the best validation so far)."""
    training = cfg.training
    effective = training.effective_batch_size
    params = list(trainable.values())
    world = sharding.world
    for epoch in range(state["epoch"], training.epochs):
        if state.get("stopped_early_at_epoch"):
            break
        batches = epoch_batches(len(pairs), effective, cfg.seed, epoch, min_pairs)
        if epoch + 1 < training.epochs:  # decode next epoch's first images early (cached anyway)
            images.prefetch(sharding.local_keys(epoch_batches(len(pairs), effective, cfg.seed, epoch + 1,
                                                              min_pairs)[:1], pairs))
        for batch_index in range(state["batch_in_epoch"], len(batches)):
            started = time.perf_counter()
            batch = batches[batch_index]
            if world.is_distributed:
                torch.manual_seed(_step_seed(cfg.seed, state["step"], world.rank))
            micros = _micro_batches(sharding.local(batch), pairs, sharding.micro_batch, images, tokens,
                                    with_negatives, seen_images=sharding.images_before(batch, pairs))
            if training.accumulation == "feature_cache":
                loss = accumulator.accumulate(micros, scale_loss=scale_loss)
                average_gradients(params, world)  # before unscaling/clipping: every replica sees the same
                negatives = negatives_per_pair([str(r) for r in pairs.recipe_ids[batch]],
                                               _step_negative_recipes(batch, pairs) if with_negatives else [],
                                               training.mask_same_recipe)
            else:
                loss = accumulate_per_micro_batch(micros, encode, loss_fn, scale_loss=scale_loss)
                negatives = float(np.mean([
                    negatives_per_pair(m.recipe_ids, m.negative_recipe_ids, training.mask_same_recipe)
                    for m in micros
                ]))
            if scaler.is_enabled():
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, training.max_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            clamp_logit_scale_(logit_scale)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - started

            n_pairs = int(len(batches[batch_index]))
            state["step"] += 1
            state["batch_in_epoch"] = batch_index + 1
            state["elapsed_s"] += seconds
            state["pairs_seen"] += n_pairs
            state["epoch_loss_sum"] += float(loss)
            state["epoch_steps"] += 1
            state["epoch_time_s"] += seconds
            state["negatives_sum"] += negatives
            record = {
                "step": state["step"], "epoch": epoch + 1, "loss": float(loss), "lr": lr,
                "temperature": float(torch.exp(-logit_scale.detach()).cpu()),
                "samples_per_s": n_pairs / seconds if seconds > 0 else 0.0,
                "elapsed_s": state["elapsed_s"],
            }
            state["logs"]["steps"].append(record)
            logger.debug("step %(step)d epoch %(epoch)d loss %(loss).4f lr %(lr).2e", record)

            last_of_epoch = batch_index + 1 == len(batches)
            if last_of_epoch:
                state["logs"]["epochs"].append({
                    "epoch": epoch + 1, "avg_loss": state["epoch_loss_sum"] / max(1, state["epoch_steps"]),
                    "time_s": state["epoch_time_s"],
                })
                logger.info("epoch %(epoch)d avg loss %(avg_loss).4f (%(time_s).1f s)", state["logs"]["epochs"][-1])
                state.update(epoch=epoch + 1, batch_in_epoch=0, epoch_loss_sum=0.0, epoch_steps=0, epoch_time_s=0.0)
                if validate is not None and ((epoch + 1) % training.eval_every_epochs == 0
                                             or epoch + 1 == training.epochs):
                    _record_validation(state, epoch + 1, validate(), trainable, best_weights, training)
            finished = last_of_epoch and (epoch + 1 == training.epochs or bool(state.get("stopped_early_at_epoch")))
            if world.is_main and (state["step"] % training.checkpoint_every_steps == 0 or finished):
                path = save_checkpoint(checkpoints, state["step"], trainable=trainable, optimizer=optimizer,
                                       scheduler=scheduler, scaler=scaler if scaler.is_enabled() else None,
                                       state=state, keep=training.keep_checkpoints, best=best_weights)
                if on_checkpoint is not None:
                    on_checkpoint(path)
            if log is not None and world.is_main:
                log({**record, "total_steps": len(batches) * training.epochs, "epochs": training.epochs})
            if finished:
                break
        state["batch_in_epoch"] = 0


def validation_score(metrics: dict[str, dict[str, float]]) -> tuple[float, float]:
    """What "better on validation" means: text→image R@1, then text→image MRR."""
    return metrics["text_to_image"]["R@1"], metrics["text_to_image"]["MRR"]


def _record_validation(state: dict, epoch: int, metrics: dict, trainable: dict, best_weights: dict,
                       training) -> None:
    state["logs"].setdefault("validation", []).append({"epoch": epoch, "metrics": metrics})
    best = state.get("best")
    if best is None or validation_score(metrics) > tuple(best["score"]):
        state["best"] = {"epoch": epoch, "step": state["step"], "score": list(validation_score(metrics)),
                         "metrics": metrics}
        state["evals_since_best"] = 0
        best_weights.clear()
        best_weights.update({name: p.detach().cpu().clone() for name, p in trainable.items()})
    else:
        state["evals_since_best"] = state.get("evals_since_best", 0) + 1
    logger.info("validation epoch %d: t2i R@1 %.3f, i2t R@1 %.3f (best epoch %d)", epoch,
                metrics["text_to_image"]["R@1"], metrics["image_to_text"]["R@1"], state["best"]["epoch"])
    patience = training.early_stopping_patience
    if patience is not None and state["evals_since_best"] >= patience and epoch < training.epochs:
        state["stopped_early_at_epoch"] = epoch
        logger.info("early stopping at epoch %d: %d validations without improvement", epoch, patience)
