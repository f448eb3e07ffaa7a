"""LoRA fine-tuning of CLIP on positive pairs, with labelled negatives and resumable checkpoints.

One optimizer step sees ``training.effective_batch_size`` positive pairs, all contrasted
with each other: pairs of the same recipe are not negatives, and the labelled negative
captions of the batch's images join the image->text denominator.  A step is encoded in
micro-batches of ``training.batch_size`` (auto: the largest that fits the device); only when
a step needs more than one does the feature cache replay them
(:class:`~clipfood_assets.modeling.losses.FeatureCacheAccumulator`).

On CUDA the frozen base is held in bf16 with fp32 adapters, the towers are compiled, the
images of the run sit on the device as uint8 when they fit, and the loop never waits on the
host: losses are read back every :data:`LOG_EVERY` steps, the next step's data is built in
a thread (:mod:`clipfood_assets.modeling.batching`).  A run resumes from the latest complete
checkpoint in ``work_dir/checkpoints`` and ends with the same weights as an uninterrupted run.
Under ``torchrun`` each process encodes a slice of every step and contrasts against the
gathered global batch (:mod:`clipfood_assets.modeling.distributed`): same result as one process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from transformers import get_scheduler

from clipfood_assets.modeling.batching import (
    MicroBatch,
    Step,
    StepBuilder,
    StepPrefetcher,
    StepSharding,
    TokenCache,
    TrainingPairs,
    epoch_batches,
    prepare_training_pairs,
)
from clipfood_assets.modeling.checkpoint import (
    latest_checkpoint,
    load_best_weights,
    load_checkpoint,
    save_checkpoint,
)
from clipfood_assets.modeling.clip import (
    PAD_ROWS,
    autocast_context,
    compile_enabled,
    compile_towers,
    compiled_region,
    describe_device,
    dynamic_rows,
    load_clip,
    resolve_precision,
)
from clipfood_assets.modeling.config import ExperimentConfig, TrainingSettings
from clipfood_assets.modeling.distributed import (
    DistributedWorld,
    assert_same_on_all_ranks,
    average_gradients,
    broadcast_parameters,
    gather_contrastive_batch,
    local_micro_batch_size,
)
from clipfood_assets.modeling.efficiency import (
    configure_cpu_threads,
    peak_memory,
    reset_peak_memory,
)
from clipfood_assets.modeling.embed import ImagePreprocessor, text_max_length
from clipfood_assets.modeling.images import DecodedImages, ImageSource, LoadImage
from clipfood_assets.modeling.lora import (
    apply_adapters,
    cast_adapter_inputs,
    check_quantization,
    count_parameters,
    hold_base_in,
    load_quantized_clip,
    logit_scale_parameter,
    save_adapters,
)
from clipfood_assets.modeling.losses import (
    FeatureCacheAccumulator,
    accumulate_per_micro_batch,
    clamp_logit_scale_,
    contrastive_loss,
)

logger = logging.getLogger(__name__)

# Steps between read-backs of the losses on CUDA (each read-back waits for the device).
LOG_EVERY = 25
# Share of the free CUDA memory the run's uint8 images may take to live on the device.
RESIDENT_IMAGES_FRACTION = 0.25
# Pairs in the memory probe of batch_size auto.
_PROBE_PAIRS = 32
_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


@dataclass
class TrainResult:
    """What a training run produced and what it cost."""

    adapter_dir: Path
    config: ExperimentConfig  # as trained: the choices auto left to the device made
    training_logs: dict
    trainable_parameters: int
    total_parameters: int
    peak_memory_bytes: int
    peak_memory_kind: str
    training_time_s: float
    samples_per_s: float
    device: str


@dataclass
class TrainState:
    """Where a run stands: saved with every checkpoint (as JSON) and restored on resume."""

    fingerprint: str = ""
    step: int = 0
    epoch: int = 0  # epochs finished
    batch_in_epoch: int = 0  # steps of the current epoch finished
    elapsed_s: float = 0.0  # training-step wall time (validation and checkpoints excluded)
    pairs_seen: int = 0
    micro_batch: int = 0  # pairs per forward pass: a resumed batch_size auto keeps it
    epoch_loss_sum: float = 0.0
    epoch_steps: int = 0
    epoch_time_s: float = 0.0
    negatives_sum: float = 0.0
    logs: dict = field(default_factory=lambda: {"steps": [], "epochs": [], "validation": []})
    resumed_from_step: int | None = None
    best: dict | None = None  # the best validation so far: epoch, step, score, metrics
    evals_since_best: int = 0
    stopped_early_at_epoch: int | None = None

    @classmethod
    def from_saved(cls, saved: dict) -> TrainState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})

    def to_saved(self) -> dict:
        return asdict(self)


def format_progress(entry: dict) -> str:
    """One human line for a training log entry (a step record plus ``total_steps`` and ``epochs``):
    ``step 250/2910 (9 %) · epoch 3/30 · loss 2.41 · 38 pairs/s · ETA 6 min``."""
    step, total = entry["step"], max(1, entry["total_steps"])
    per_step = entry["elapsed_s"] / step if step else 0.0
    eta_s = per_step * (total - step)
    eta = f"{eta_s / 60:.0f} min" if eta_s >= 90 else f"{eta_s:.0f} s"
    return (f"step {step}/{total} ({100 * step / total:.0f} %) · epoch {entry['epoch']}/{entry['epochs']} · "
            f"loss {entry['loss']:.3g} · {entry['samples_per_s']:.0f} pairs/s · ETA {eta}")


def _step_seed(seed: int, step: int, rank: int) -> int:
    # Each process's dropout stream: decorrelated across processes, a function of the step so
    # that a resumed run (which restores rank 0's RNG state everywhere) reseeds it exactly.
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0]) >> 1


def build_scheduler(optimizer: torch.optim.Optimizer, training: TrainingSettings, total_steps: int):
    """transformers' schedule of ``training.scheduler`` with a linear warm-up over ``warmup_ratio`` of the steps."""
    warmup = int(np.ceil(training.warmup_ratio * total_steps))
    return get_scheduler(_SCHEDULERS[training.scheduler], optimizer, num_warmup_steps=warmup,
                         num_training_steps=total_steps)


@contextlib.contextmanager
def _deterministic(device: torch.device):
    """Deterministic kernels on the CPU (bit-for-bit reruns and resumes).  On CUDA the seeds
    are fixed but kernels may be non-deterministic: the deterministic mode fills every new
    tensor and forbids the fast attention backward, a large share of a step there."""
    if device.type != "cpu":
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
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
    # Knobs that change how, not what, is computed are left out, so a run resumes with checkpointing
    # toggled or another compile setting: checkpoint cadence, workers, compilation, gradient
    # checkpointing, cuDNN autotuning. The feature cache's micro-batch joins as the number in effect
    # (_with_micro_batch), not as configured: an auto one is the number the run started with.
    update = {"checkpoint_every_steps": 1, "keep_checkpoints": 1, "num_workers": 0, "memory_fraction": 0.7,
              "compile": "auto", "cudnn_benchmark": True, "gradient_accumulation_steps": None}
    if cfg.training.accumulation == "feature_cache":
        update["batch_size"] = "auto"
    stable = cfg.model_copy(update={"training": cfg.training.model_copy(update=update)})
    text = yaml.safe_dump(stable.model_dump(mode="json", exclude={"training": {"gradient_checkpointing"}}),
                          sort_keys=False, default_flow_style=False)
    digest = hashlib.sha256(text.encode("utf-8"))
    digest.update(str(base_model).encode("utf-8"))
    digest.update(pairs.fingerprint().encode("utf-8"))
    if validation_pairs is not None and len(validation_pairs):
        rows = validation_pairs[["recipe_id", "image_key", "caption"]].astype(str).sort_values(["image_key", "caption"])
        digest.update(pd.util.hash_pandas_object(rows, index=False).values.tobytes())
    return digest.hexdigest()


def _with_micro_batch(fingerprint: str, micro_batch: int) -> str:
    # Another split of a step sums the same loss in another order (and draws other dropout masks): a
    # run resumes with its own micro-batch only, bit for bit on the CPU.
    return hashlib.sha256(f"{fingerprint}/micro_batch={micro_batch}".encode()).hexdigest()


def _checkpointed_micro_batch(checkpoints: Path) -> int | None:
    """The micro-batch the latest complete checkpoint trained with (None: none, or saved before it was kept)."""
    latest = latest_checkpoint(checkpoints)
    if latest is None:
        return None
    return json.loads((latest / "state.json").read_text(encoding="utf-8"))["state"].get("micro_batch") or None


@contextlib.contextmanager
def _cudnn_benchmark(enabled: bool):
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


# --------------------------------------------------------------------------- device set-up


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


class ResidentImages:
    """The run's uint8 images as one device tensor ``[N, 3, H, W]``: a step's pixels are an
    index on the device, no host copy.  Built from any :class:`ImageSource` in chunks."""

    def __init__(self, source: ImageSource, keys: Sequence[str], device: torch.device, chunk: int = 1024) -> None:
        self.keys = list(dict.fromkeys(keys))
        self._row = {key: i for i, key in enumerate(self.keys)}
        parts = [source.get(self.keys[i:i + chunk]).to(device, non_blocking=True)
                 for i in range(0, len(self.keys), chunk)]
        self.table = torch.cat(parts) if len(parts) > 1 else parts[0]
        self.device = device

    def get(self, keys: Sequence[str]) -> torch.Tensor:
        rows = torch.tensor([self._row[k] for k in keys], dtype=torch.long).pin_memory()
        return self.table.index_select(0, rows.to(self.device, non_blocking=True))

    @staticmethod
    def fits(n_images: int, image_shape: Sequence[int], device: torch.device) -> bool:
        if device.type != "cuda":
            return False
        free, _ = torch.cuda.mem_get_info(device)
        return n_images * int(np.prod(image_shape)) <= RESIDENT_IMAGES_FRACTION * free


def _probe_pairs_per_budget(run_pass: Callable[[int], None], device: torch.device, fraction: float,
                            effective: int) -> int:
    """Largest micro-batch (a multiple of 8, at most ``effective``) whose forward + backward
    fits ``fraction`` of the free CUDA memory, from one probe pass of :data:`_PROBE_PAIRS` pairs."""
    probe = min(_PROBE_PAIRS, effective)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.random.fork_rng(devices=[device]):
        run_pass(probe)
    torch.cuda.synchronize(device)
    per_pair = max(1, torch.cuda.max_memory_allocated(device) - before) / probe
    torch.cuda.empty_cache()  # the probe's blocks back to the device, so "free" counts them
    free, _ = torch.cuda.mem_get_info(device)
    fit = int(fraction * free / per_pair)
    return max(1, min(effective, fit // 8 * 8 if fit >= 8 else fit))


def train_lora(
    base_model: str,
    train_pairs: pd.DataFrame,
    images: ImageSource | LoadImage,
    cfg: ExperimentConfig,
    *,
    device: torch.device | str,
    work_dir: Path,
    on_checkpoint: Callable[[Path], None] | None = None,
    log: Callable[[dict], None] | None = None,
    world: DistributedWorld | None = None,
    validation_pairs: pd.DataFrame | None = None,
) -> TrainResult:
    """Fine-tune LoRA adapters on ``train_pairs`` and save them to ``work_dir/adapters``.

    ``train_pairs`` has ``recipe_id, image_key, caption`` and optionally ``label`` (1
    positive, 0 labelled negative: an image with another recipe's caption).  ``images``: an
    :class:`~clipfood_assets.modeling.images.ImageSource` (the packed store) or a function
    returning an image's encoded bytes by key (decoded here).  ``log`` gets every step's
    record after any checkpoint of that step (on CUDA in groups of up to :data:`LOG_EVERY`);
    ``on_checkpoint`` every complete checkpoint directory (both may raise to stop the run,
    which then resumes from the latest checkpoint when called again with the same
    arguments).  Raises ValueError when the checkpoints in ``work_dir`` belong to another
    configuration or dataset.

    ``world`` (default: the initialised torch.distributed group, else one process): with N
    processes each encodes a slice of every step, the loss is over the gathered global batch
    and gradients are averaged, so the run computes what one process computes.  Every process
    calls this with the same arguments; only rank 0 writes checkpoints and adapters and calls
    ``log`` and ``on_checkpoint``.

    ``validation_pairs`` (``recipe_id, image_key, caption``, recipes disjoint from training):
    recipe-level retrieval both ways every ``training.eval_every_epochs`` epochs, logged as
    ``training_logs["validation"]``; with ``training.early_stopping_patience`` training stops
    after that many validations without a better text→image R@1 (MRR breaks ties), and with
    ``training.final_adapters: best`` the saved adapters are the best validation epoch's.
    """
    device = torch.device(device)
    cfg = cfg.on_device(device)  # auto choices made once: fingerprinted, recorded, the same on resume
    training = cfg.training
    world = world if world is not None else DistributedWorld.current()
    if world.is_distributed and training.accumulation != "feature_cache":
        raise ValueError("training.accumulation per_micro_batch (the notebooks' ablation) runs in one process only; "
                         "use feature_cache with several processes")
    precision = resolve_precision(device, training.precision)
    with_negatives = training.use_labelled_negatives and training.loss != "clip"
    pairs = prepare_training_pairs(train_pairs, use_labelled_negatives=with_negatives)
    fingerprint = _run_fingerprint(base_model, cfg, pairs, validation_pairs)
    # Every process must train on the same data and config, or the recipe codes and shards disagree.
    assert_same_on_all_ranks(int(fingerprint[:15], 16), world, "the run fingerprint (config, base model, data)", device)
    configure_cpu_threads(device)

    with _deterministic(device):
        _seed_everything(cfg.seed)
        run = _Run.start(base_model, cfg, pairs, images, device=device, precision=precision, world=world,
                         work_dir=Path(work_dir), with_negatives=with_negatives, on_checkpoint=on_checkpoint,
                         log=log, validation_pairs=validation_pairs)
        state = run.restore(_with_micro_batch(fingerprint, run.micro_batch))
        try:
            run.train(state)
        finally:
            run.close()
        adapter_dir = run.save_adapters()
        peak, kind = peak_memory(device)

    return TrainResult(
        adapter_dir=adapter_dir,
        config=cfg,
        training_logs=_training_logs(state, run, precision, pairs),
        trainable_parameters=run.parameter_counts[0],
        total_parameters=run.parameter_counts[1],
        peak_memory_bytes=peak,
        peak_memory_kind=kind,
        training_time_s=state.elapsed_s,
        samples_per_s=state.pairs_seen / state.elapsed_s if state.elapsed_s > 0 else 0.0,
        device=describe_device(device),
    )


def _training_logs(state: TrainState, run: _Run, precision: str, pairs: TrainingPairs) -> dict:
    """training_logs.json: every step and epoch, validation, and how the run was computed."""
    training, world = run.cfg.training, run.world
    steps = max(1, len(state.logs["steps"]))
    return {
        "steps": state.logs["steps"],
        "epochs": state.logs["epochs"],
        "total_time_s": state.elapsed_s,
        "negatives_per_pair": state.negatives_sum / steps,
        "effective_batch_size": training.effective_batch_size,
        "micro_batch_size": run.micro_batch,
        "world_size": world.world_size,
        "accumulation": training.accumulation,
        "loss": training.loss,
        "precision": precision,
        "lora_dropout": run.cfg.lora.lora_dropout,
        "frozen_weights_dtype": str(run.frozen_dtype).removeprefix("torch."),
        "compiled": run.compiled,
        "images_on_device": run.resident is not None,
        "total_steps": run.total_steps,
        "resumed_from_step": state.resumed_from_step,
        "labelled_negative_images": len(pairs.negatives_by_image),
        "positive_pairs": len(pairs),
        "validation": state.logs.get("validation", []),
        "best_validation": state.best,
        "stopped_early_at_epoch": state.stopped_early_at_epoch,
        "final_adapters": training.final_adapters if run.best_weights else "last",
    }


@dataclass
class _Run:
    """Everything one training run holds between steps (built once by :meth:`start`)."""

    cfg: ExperimentConfig
    pairs: TrainingPairs
    model: torch.nn.Module
    processor: object
    device: torch.device
    precision: str
    world: DistributedWorld
    work_dir: Path
    trainable: dict[str, torch.nn.Parameter]
    logit_scale: torch.nn.Parameter
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    source: ImageSource
    owns_source: bool
    preprocessor: ImagePreprocessor
    tokens: TokenCache
    with_negatives: bool
    on_checkpoint: Callable[[Path], None] | None
    log: Callable[[dict], None] | None
    validation_pairs: pd.DataFrame | None
    parameter_counts: tuple[int, int]
    frozen_dtype: torch.dtype
    micro_batch: int = 0
    resident: ResidentImages | None = None
    builder: StepBuilder | None = None
    scheduler: object = None
    total_steps: int = 0
    compiled: bool = False
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def start(cls, base_model: str, cfg: ExperimentConfig, pairs: TrainingPairs, images: ImageSource | LoadImage, *,
              device: torch.device, precision: str, world: DistributedWorld, work_dir: Path, with_negatives: bool,
              on_checkpoint, log, validation_pairs) -> _Run:
        training = cfg.training
        model, processor, frozen_dtype = _load_trainable_clip(base_model, cfg, device, precision)
        logit_scale = logit_scale_parameter(model)
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        decay = [p for p in trainable.values() if p is not logit_scale]
        groups = [{"params": decay, "weight_decay": training.weight_decay}]
        if logit_scale.requires_grad:  # no weight decay on the temperature, as open_clip
            groups.append({"params": [logit_scale], "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, lr=training.learning_rate, fused=device.type == "cuda")
        preprocessor = ImagePreprocessor(processor)
        owns_source = not isinstance(images, ImageSource)
        source = DecodedImages(images, preprocessor, training.num_workers) if owns_source else images
        tokenizer = processor.tokenizer
        tokens = TokenCache(
            tokenizer,
            list(pairs.captions) + [c for negs in pairs.negatives_by_image.values() for c, _ in negs],
            text_max_length(model, tokenizer),
        )
        run = cls(cfg=cfg, pairs=pairs, model=model, processor=processor, device=device, precision=precision,
                  world=world, work_dir=work_dir, trainable=trainable, logit_scale=logit_scale, optimizer=optimizer,
                  scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"), source=source,
                  owns_source=owns_source, preprocessor=preprocessor, tokens=tokens, with_negatives=with_negatives,
                  on_checkpoint=on_checkpoint, log=log, validation_pairs=validation_pairs,
                  parameter_counts=count_parameters(model), frozen_dtype=frozen_dtype)
        run._place_images()
        run._size_micro_batch(_checkpointed_micro_batch(work_dir / "checkpoints"))
        run.compiled = compile_enabled(training.compile, device)
        if run.compiled:
            compile_towers(model)
        min_pairs = max(2, world.world_size)
        steps_per_epoch = len(epoch_batches(len(pairs), training.effective_batch_size, cfg.seed, 0, min_pairs))
        run.total_steps = steps_per_epoch * training.epochs
        run.scheduler = build_scheduler(optimizer, training, run.total_steps)
        return run

    # ----------------------------------------------------------------- set-up

    def _place_images(self) -> None:
        """On CUDA, every image of the run on the device when they fit (no per-step host copy)."""
        if self.device.type != "cuda":
            return
        keys = list(dict.fromkeys(str(k) for k in self.pairs.image_keys))
        shape = self.source.get(keys[:1]).shape[1:]
        if ResidentImages.fits(len(keys), shape, self.device):
            self.resident = ResidentImages(self.source, keys, self.device)

    def _builder(self, micro_batch: int) -> StepBuilder:
        training = self.cfg.training
        return StepBuilder(
            self.pairs, StepSharding(self.world, micro_batch), self.tokens,
            None if self.resident is not None else self.source, with_negatives=self.with_negatives,
            feature_cache=training.accumulation == "feature_cache", mask_same_recipe=training.mask_same_recipe,
            pad_multiple=PAD_ROWS if compile_enabled(training.compile, self.device) else None,
            pin_memory=self.device.type == "cuda",
        )

    def _size_micro_batch(self, resumed: int | None) -> None:
        training = self.cfg.training
        fit = None
        if training.batch_size == "auto" and resumed is not None:
            fit = resumed  # the checkpoint's: its steps were summed in micro-batches of this size
        elif training.batch_size == "auto" and self.device.type == "cuda":
            first = epoch_batches(len(self.pairs), training.effective_batch_size, self.cfg.seed, 0)[0]

            def probe(n_pairs: int) -> None:
                step = self._builder(n_pairs).build(first[:n_pairs])
                self.loss_fn(self.encode(step.micros[0]), step.micros[:1]).backward()
                self.optimizer.zero_grad(set_to_none=True)

            fit = _probe_pairs_per_budget(probe, self.device, training.memory_fraction, training.effective_batch_size)
        micro = self.micro_batch = training.micro_batch_size(fit)
        self.builder = self._builder(local_micro_batch_size(micro, self.world))
        how = " (auto: the checkpoint's)" if resumed is not None and training.batch_size == "auto" else (
            f" (auto: {fit} fit on {describe_device(self.device)})" if fit else "")
        logger.info("micro-batch %d of effective batch %d%s", micro, training.effective_batch_size, how)

    def restore(self, fingerprint: str) -> TrainState:
        """The state to continue from: the latest complete checkpoint's, else a fresh one."""
        state = TrainState(fingerprint=fingerprint, micro_batch=self.micro_batch)
        checkpoints = self.work_dir / "checkpoints"
        latest = latest_checkpoint(checkpoints)
        if latest is not None:
            saved = load_checkpoint(latest, trainable=self.trainable, optimizer=self.optimizer,
                                    scheduler=self.scheduler, scaler=self.scaler if self.scaler.is_enabled() else None)
            if saved.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"checkpoints in {checkpoints} come from another configuration or dataset; "
                    "delete them or use another work_dir"
                )
            state = TrainState.from_saved(saved)
            state.resumed_from_step = state.step
            self.best_weights.update(load_best_weights(latest))
        broadcast_parameters(self.trainable.values(), self.world)  # replicas start from rank 0's weights
        self.world.barrier()  # every process has read the checkpoint before rank 0 writes or prunes any
        return state

    # ----------------------------------------------------------------- one step

    def encode(self, micro: MicroBatch) -> dict[str, torch.Tensor]:
        device = self.device
        pixels = micro.pixels if micro.pixels is not None else self.resident.get(micro.image_keys)
        pixels = self.preprocessor.normalize(pixels.to(device, non_blocking=True))
        ids = micro.text_ids.to(device, non_blocking=True)
        mask = micro.text_mask.to(device, non_blocking=True)
        if self.compiled:  # rows already padded by the builder; batch and caption length dynamic
            pixels, ids, mask = dynamic_rows(pixels), dynamic_rows(ids, (0, 1)), dynamic_rows(mask, (0, 1))
        with autocast_context(device, self.precision):
            image = self.model.get_image_features(pixel_values=pixels).pooler_output
            text = self.model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        n_pairs, n_captions = micro.n_pairs, micro.n_pairs + len(micro.negative_codes)
        return {"image": image[:n_pairs], "text": text[:n_pairs], "negative": text[n_pairs:n_captions]}

    def loss_fn(self, features: dict[str, torch.Tensor], micros: Sequence[MicroBatch]) -> torch.Tensor:
        device, training = self.device, self.cfg.training
        image, text, negative = features["image"], features["text"], features["negative"]
        pair_codes = torch.cat([m.pair_codes.to(device, non_blocking=True) for m in micros])
        negative_codes = torch.cat([m.negative_codes.to(device, non_blocking=True) for m in micros])
        if self.world.is_distributed:  # contrast against every process's pairs and negatives
            step = gather_contrastive_batch(image, text, negative, pair_codes, negative_codes, self.world)
            image, text, negative = step.image, step.text, step.negative
            pair_codes, negative_codes = step.pair_codes, step.negative_codes
        return contrastive_loss(
            image, text, self.logit_scale,
            recipe_ids=pair_codes,
            negative_text_emb=negative,
            negative_recipe_ids=negative_codes,
            mask_same_recipe=training.mask_same_recipe, kind=training.loss,
        )

    def optimizer_step(self, step: Step) -> torch.Tensor:
        """One optimizer step over ``step``; the loss stays on the device (no host sync)."""
        with _cudnn_benchmark(self.cfg.training.cudnn_benchmark), \
                compiled_region("the training step") if self.compiled else contextlib.nullcontext():
            return self._optimizer_step(step)

    def _optimizer_step(self, step: Step) -> torch.Tensor:
        training, scaler = self.cfg.training, self.scaler
        scale_loss = scaler.scale if scaler.is_enabled() else None
        params = list(self.trainable.values())
        if training.accumulation == "feature_cache":
            loss = FeatureCacheAccumulator(self.encode, self.loss_fn).accumulate(step.micros, scale_loss=scale_loss)
            average_gradients(params, self.world)  # before unscaling/clipping: every replica sees the same
        else:
            loss = accumulate_per_micro_batch(step.micros, self.encode, self.loss_fn, scale_loss=scale_loss)
        if scaler.is_enabled():
            scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(params, training.max_grad_norm)
        scaler.step(self.optimizer)
        scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        clamp_logit_scale_(self.logit_scale)
        return loss

    # ----------------------------------------------------------------- the loop

    def train(self, state: TrainState) -> None:
        """The optimisation loop from ``state``'s position to the end; mutates ``state`` and
        ``best_weights`` (the trainable tensors of the best validation so far)."""
        cfg, training, world = self.cfg, self.cfg.training, self.world
        min_pairs = max(2, world.world_size)
        read_every = LOG_EVERY if self.device.type == "cuda" else 1  # a CPU never runs ahead of the host
        reset_peak_memory(self.device)
        self.model.train()
        for epoch in range(state.epoch, training.epochs):
            if state.stopped_early_at_epoch:
                break
            batches = epoch_batches(len(self.pairs), training.effective_batch_size, cfg.seed, epoch, min_pairs)
            if self.resident is None:  # start decoding this epoch's images in order
                self.source.prefetch(self.builder.sharding.local_keys(batches[state.batch_in_epoch:], self.pairs))
            steps = StepPrefetcher(self.builder, batches[state.batch_in_epoch:])
            window: list[tuple[dict, torch.Tensor, torch.Tensor]] = []
            started = time.perf_counter()
            try:
                for step in steps:
                    if world.is_distributed:
                        torch.manual_seed(_step_seed(cfg.seed, state.step, world.rank))
                    lr = self.optimizer.param_groups[0]["lr"]
                    loss = self.optimizer_step(step)
                    state.step += 1
                    state.batch_in_epoch += 1
                    state.pairs_seen += step.n_pairs
                    state.negatives_sum += step.negatives_per_pair
                    state.epoch_steps += 1
                    window.append(({"step": state.step, "epoch": epoch + 1, "lr": lr, "n_pairs": step.n_pairs},
                                   loss, self.logit_scale.detach().clone()))
                    last_of_epoch = state.batch_in_epoch == len(batches)
                    checkpoint_due = state.step % training.checkpoint_every_steps == 0
                    if len(window) < read_every and not (last_of_epoch or checkpoint_due):
                        continue
                    records = self._read_back(state, window, started)
                    if last_of_epoch:
                        self._end_epoch(state, epoch)
                    finished = last_of_epoch and (epoch + 1 == training.epochs or bool(state.stopped_early_at_epoch))
                    if world.is_main and (checkpoint_due or finished):
                        self._checkpoint(state)
                    if self.log is not None and world.is_main:
                        for record in records:
                            self.log({**record, "total_steps": self.total_steps, "epochs": training.epochs})
                    started = time.perf_counter()
                    if finished:
                        break
            finally:
                steps.close()
            state.batch_in_epoch = 0

    def _read_back(self, state: TrainState, window: list, started: float) -> list[dict]:
        """Wait for the device once, then turn the window's losses into step records."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = (time.perf_counter() - started) / len(window)  # the window's steps share its wall time
        records = []
        for base, loss, logit_scale in window:
            state.elapsed_s += seconds
            state.epoch_time_s += seconds
            value = float(loss)
            state.epoch_loss_sum += value
            record = {"step": base["step"], "epoch": base["epoch"], "loss": value, "lr": base["lr"],
                      "temperature": float(torch.exp(-logit_scale.float())),
                      "samples_per_s": base["n_pairs"] / seconds if seconds > 0 else 0.0,
                      "elapsed_s": state.elapsed_s}
            state.logs["steps"].append(record)
            records.append(record)
            logger.debug("step %(step)d epoch %(epoch)d loss %(loss).4f lr %(lr).2e", record)
        window.clear()
        return records

    def _end_epoch(self, state: TrainState, epoch: int) -> None:
        training = self.cfg.training
        state.logs["epochs"].append({"epoch": epoch + 1, "avg_loss": state.epoch_loss_sum / max(1, state.epoch_steps),
                                     "time_s": state.epoch_time_s})
        logger.info("epoch %(epoch)d avg loss %(avg_loss).4f (%(time_s).1f s)", state.logs["epochs"][-1])
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        state.epoch_loss_sum, state.epoch_steps, state.epoch_time_s = 0.0, 0, 0.0
        if self.validation_pairs is not None and len(self.validation_pairs) and (
                (epoch + 1) % training.eval_every_epochs == 0 or epoch + 1 == training.epochs):
            _record_validation(state, epoch + 1, self.validate(), self.trainable, self.best_weights, training)

    def validate(self) -> dict[str, dict[str, float]]:
        from clipfood_assets.modeling.evaluate import validation_metrics

        # In the training's precision: the model holds its weights in that layout.
        evaluation = self.cfg.evaluation.model_copy(update={"precision": self.precision})
        self.model.eval()
        try:
            with torch.no_grad():
                return validation_metrics(self.model, self.processor, self.validation_pairs, self.source,
                                          cfg=self.cfg.model_copy(update={"evaluation": evaluation}),
                                          device=self.device)
        finally:
            self.model.train()

    def _checkpoint(self, state: TrainState) -> None:
        training = self.cfg.training
        path = save_checkpoint(self.work_dir / "checkpoints", state.step, trainable=self.trainable,
                               optimizer=self.optimizer, scheduler=self.scheduler,
                               scaler=self.scaler if self.scaler.is_enabled() else None, state=state.to_saved(),
                               keep=training.keep_checkpoints, best=self.best_weights)
        if self.on_checkpoint is not None:
            self.on_checkpoint(path)

    # ----------------------------------------------------------------- the end

    def save_adapters(self) -> Path:
        """The adapters to keep (the best validation epoch's, or the last) in ``work_dir/adapters``."""
        self.model.eval()
        if self.cfg.training.final_adapters == "best" and self.best_weights:
            with torch.no_grad():
                for name, parameter in self.trainable.items():
                    parameter.copy_(self.best_weights[name].to(parameter.device))
        adapter_dir = self.work_dir / "adapters"
        if self.world.is_main:
            save_adapters(self.model, adapter_dir, self.logit_scale)
        self.world.barrier()  # the adapters exist for everyone once this returns
        return adapter_dir

    def close(self) -> None:
        if self.owns_source:
            self.source.close()
        self.resident = None


def _load_trainable_clip(base_model: str, cfg: ExperimentConfig, device: torch.device,
                         precision: str) -> tuple[torch.nn.Module, object, torch.dtype]:
    """The base CLIP with adapters of ``cfg.peft.method``: (model, processor, frozen weights' dtype).

    In bf16 the frozen base is stored in bf16 (no per-step casts of fp32 weights under autocast),
    the layout the evaluation uses too (:func:`~clipfood_assets.modeling.lora.hold_base_in`);
    adapters and the temperature stay fp32, as the optimizer needs.
    """
    check_quantization(cfg.peft.quantization, device)
    model, processor = load_clip(base_model, device)
    if cfg.peft.quantization == "4bit":  # QLoRA: the frozen base in NF4 (CUDA; checked above)
        model = load_quantized_clip(base_model, device)
    if cfg.training.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model = apply_adapters(model, cfg.lora, train_logit_scale=cfg.training.train_logit_scale, method=cfg.peft.method)
    if cfg.peft.quantization == "none" and precision == "bf16":
        hold_base_in(model, torch.bfloat16)
    cast_adapter_inputs(model, cfg.lora.fp32_inputs)
    for parameter in model.parameters():  # QLoRA's preparation may hand over adapters in its compute dtype
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    temperature = logit_scale_parameter(model)
    frozen_dtype = next(p.dtype for p in model.parameters()
                        if p.is_floating_point() and not p.requires_grad and p is not temperature)
    return model, processor, frozen_dtype


def validation_score(metrics: dict[str, dict[str, float]]) -> tuple[float, float]:
    """What "better on validation" means: text→image R@1, then text→image MRR."""
    return metrics["text_to_image"]["R@1"], metrics["text_to_image"]["MRR"]


def _record_validation(state: TrainState, epoch: int, metrics: dict, trainable: dict, best_weights: dict,
                       training: TrainingSettings) -> None:
    state.logs.setdefault("validation", []).append({"epoch": epoch, "metrics": metrics})
    best = state.best
    if best is None or validation_score(metrics) > tuple(best["score"]):
        state.best = {"epoch": epoch, "step": state.step, "score": list(validation_score(metrics)),
                      "metrics": metrics}
        state.evals_since_best = 0
        best_weights.clear()
        best_weights.update({name: p.detach().cpu().clone() for name, p in trainable.items()})
    else:
        state.evals_since_best += 1
    logger.info("validation epoch %d: t2i R@1 %.3f, i2t R@1 %.3f (best epoch %d)", epoch,
                metrics["text_to_image"]["R@1"], metrics["image_to_text"]["R@1"], state.best["epoch"])
    patience = training.early_stopping_patience
    if patience is not None and state.evals_since_best >= patience and epoch < training.epochs:
        state.stopped_early_at_epoch = epoch
        logger.info("early stopping at epoch %d: %d validations without improvement", epoch, patience)
