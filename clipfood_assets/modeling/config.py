"""Experiment configuration: one validated pydantic model mirroring configs/experiment_config.yaml.

Sections are :class:`~clipfood_assets.config_base.ConfigSection` (strict, frozen): unknown keys,
wrong types (``epochs: "3"``) and out-of-range values are rejected with a ValueError that names
the dotted key (``training.batch_size: ...``), so a typo in the YAML never silently falls
back to a default.  A choice made later is a new config (``model_copy(update=...)``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from clipfood_assets.config_base import ConfigSection, YamlFloat
from clipfood_assets.yaml_files import read_yaml_mapping


LossKind = Literal["clip", "clip_hard_negatives", "siglip"]
# Micro-batch of batch_size auto off CUDA: the original notebooks', which a CPU or small GPU holds.
CPU_MICRO_BATCH = 2
# Evaluation batch of batch_size auto: large on CUDA (the model's speed), cache-sized elsewhere.
CUDA_EVAL_BATCH, CPU_EVAL_BATCH = 512, 32
# lora_dropout auto. On CUDA none: by the GPU review's paper estimate peft's dropout costs ~9 of ~95 ms of a
# ViT-B/32 step at batch 1024 (not measured on a GPU yet; gpu_check.py times both). Elsewhere the
# notebooks' 0.05, which the CPU demo's figures were measured with.
CUDA_LORA_DROPOUT, CPU_LORA_DROPOUT = 0.0, 0.05
# evaluation.compile auto's break-even, a paper estimate for ViT-B/32 on an H200 (not measured on a GPU yet;
# gpu_check.py prints the measured one): compiling both towers ~10-20 s (inductor, warm cache), saving
# ~17-28 us per item (eager ~16-20k img/s, compiled ~30k), so it pays from ~0.5M items.
EVAL_COMPILE_MIN_ITEMS = 500_000


class ModelConfig(ConfigSection):
    name: str = Field("openai/clip-vit-base-patch32", min_length=1,
                      description="Hugging Face hub id or local directory of a CLIP model (safetensors)")


def _on_cuda(device) -> bool:
    return str(device).startswith("cuda")


class LoraSettings(ConfigSection):
    r: int = Field(8, ge=1, le=1024, description="LoRA rank")
    lora_alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] | Literal["auto"] = Field(
        "auto", description=f"Dropout on each adapter's input. auto: {CUDA_LORA_DROPOUT} on CUDA (there it is four "
                            "unfused passes per layer over the input, ~10 % of a step), "
                            f"{CPU_LORA_DROPOUT} elsewhere (the notebooks')",
    )
    fp32_inputs: bool = Field(
        False, description="peft copies each adapter's input to the adapters' fp32 first; under bf16 autocast the "
                           "adapter's matmul casts it straight back, so false (inputs stay in the compute dtype) "
                           "saves the copy for the same result without dropout",
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"], min_length=1,
        description="Linear layer names (last component of the module path) that get adapters",
    )
    scope: Literal["both", "vision", "text"] = Field("both", description="Which tower(s) get adapters")
    bias: Literal["none"] = "none"

    def dropout_on(self, device) -> float:
        """The dropout in effect on ``device`` (a torch.device or its name)."""
        if self.lora_dropout != "auto":
            return self.lora_dropout
        return CUDA_LORA_DROPOUT if _on_cuda(device) else CPU_LORA_DROPOUT


class TrainingSettings(ConfigSection):
    epochs: int = Field(3, ge=1, le=10_000)
    effective_batch_size: int = Field(
        32, ge=2, le=1_000_000,
        description="Pairs per optimizer step: the contrastive batch every pair is contrasted with (the original notebooks' 2 x 16)",
    )
    batch_size: PositiveInt | Literal["auto"] = Field(
        "auto",
        description="Micro-batch: pairs encoded per forward pass. auto: on CUDA the largest that fits "
                    "training.memory_fraction of the free device memory (at most the effective batch), "
                    f"elsewhere {CPU_MICRO_BATCH} (the notebooks'). The effective batch does not change with it",
    )
    gradient_accumulation_steps: int | None = Field(
        None, ge=1,
        description="The notebooks' way to set the effective batch: batch_size x this (needs an integer batch_size); "
                    "when given it sets effective_batch_size",
    )
    memory_fraction: float = Field(0.7, gt=0.0, le=0.95,
                                   description="Share of the free CUDA memory batch_size auto may plan for")
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the two towers: auto = on CUDA only (CPU runs stay eager)"
    )
    cudnn_benchmark: bool = Field(
        True, description="cuDNN times its kernels for the step's shapes (the patch-embedding convolution) and keeps "
                          "the fastest; set for each training step and restored after, never process-wide",
    )
    accumulation: Literal["feature_cache", "per_micro_batch"] = Field(
        "feature_cache",
        description="feature_cache: every pair is contrasted with the whole effective batch; "
                    "per_micro_batch: the notebooks' behaviour (negatives only within a micro-batch)",
    )
    learning_rate: YamlFloat = Field(1e-4, gt=0.0, le=1.0)
    weight_decay: YamlFloat = Field(0.01, ge=0.0)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0.0)
    loss: LossKind = "clip_hard_negatives"
    mask_same_recipe: bool = True
    use_labelled_negatives: bool = True
    train_logit_scale: bool = True
    checkpoint_every_steps: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1, description="Most recent complete checkpoints kept on disk")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    num_workers: int = Field(2, ge=0, le=64, description="Image decoding threads")
    gradient_checkpointing: bool = Field(
        False, description="Recompute encoder activations in the backward pass (non-reentrant): "
                           "less memory, ~30% more compute, same gradients"
    )
    eval_every_epochs: int = Field(1, ge=1, description="Validation (recipe-level R@1/R@5/MRR) every N epochs")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many validations without a better text→image R@1; null: off"
    )
    final_adapters: Literal["best", "last"] = Field(
        "best", description="best: the adapters of the best validation epoch; last: those of the last epoch"
    )

    @model_validator(mode="before")
    @classmethod
    def _seed_style_batch(cls, data: Any) -> Any:
        # batch_size x gradient_accumulation_steps (the notebooks' keys) sets the effective batch.
        if isinstance(data, Mapping) and data.get("gradient_accumulation_steps") is not None:
            micro = data.get("batch_size", "auto")
            if not isinstance(micro, int) or isinstance(micro, bool):
                raise ValueError("gradient_accumulation_steps needs an integer batch_size; or set effective_batch_size "
                                 "and leave batch_size auto")
            data = {**data, "effective_batch_size": micro * int(data["gradient_accumulation_steps"])}
        return data

    @model_validator(mode="after")
    def _micro_fits_effective(self) -> TrainingSettings:
        if isinstance(self.batch_size, int) and self.batch_size > self.effective_batch_size:
            raise ValueError(f"batch_size ({self.batch_size}) exceeds effective_batch_size ({self.effective_batch_size})")
        if self.accumulation == "per_micro_batch" and self.batch_size == "auto":
            raise ValueError("accumulation per_micro_batch (the notebooks' ablation) needs an integer batch_size")
        return self

    def micro_batch_size(self, device_fit: int | None = None) -> int:
        """Pairs per forward pass: the configured integer, or for ``auto`` ``device_fit`` (the
        largest micro-batch the device holds; None off CUDA: the notebooks' 2), balanced so the
        effective batch splits into equal micro-batches."""
        if isinstance(self.batch_size, int):
            return self.batch_size
        fit = max(1, CPU_MICRO_BATCH if device_fit is None else device_fit)
        steps = math.ceil(self.effective_batch_size / min(fit, self.effective_batch_size))
        return math.ceil(self.effective_batch_size / steps)


class EvaluationSettings(ConfigSection):
    batch_size: PositiveInt | Literal["auto"] = Field(
        "auto", description=f"Images or captions per forward pass; auto: {CUDA_EVAL_BATCH} on CUDA, "
                            f"{CPU_EVAL_BATCH} elsewhere")
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the towers for evaluation: auto = on CUDA when the images and captions to "
                            "embed reach compile_min_items"
    )
    compile_min_items: int = Field(
        EVAL_COMPILE_MIN_ITEMS, ge=0,
        description="Images + captions from which evaluation.compile auto compiles: below, the compile costs more "
                    "than it saves",
    )
    recall_at: list[int] = Field(default_factory=lambda: [1, 5, 10], min_length=1)
    top_k_examples: int = Field(5, ge=1)
    num_examples: int = Field(10, ge=0)
    bootstrap_samples: int = Field(1000, ge=1, le=1_000_000)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    fast_jpeg_decode: bool = Field(
        False, description="Decode large JPEGs at a reduced DCT scale (faster; pixels differ by a few levels)"
    )
    num_workers: int = Field(0, ge=0, le=64, description="Image decoding threads (0: chosen from the cores)")

    def batch_size_on(self, device) -> int:
        """The batch size in effect on ``device`` (a torch.device or its name)."""
        if isinstance(self.batch_size, int):
            return self.batch_size
        return CUDA_EVAL_BATCH if _on_cuda(device) else CPU_EVAL_BATCH

    @field_validator("recall_at")
    @classmethod
    def _positive_sorted_unique(cls, value: list[int]) -> list[int]:
        if any(k < 1 for k in value):
            raise ValueError("recall cut-offs must be >= 1")
        return sorted(set(value))


PeftMethod = Literal["lora", "dora", "loha", "lokr", "ia3"]


class PeftSettings(ConfigSection):
    method: PeftMethod = Field(
        "lora", description="peft method: lora | dora (weight-decomposed LoRA) | loha | lokr | ia3; ranks, alpha "
                            "and target modules come from the lora section"
    )
    quantization: Literal["none", "4bit"] = Field(
        "none", description="4bit: QLoRA, the frozen base in NF4 with bitsandbytes (CUDA only)"
    )


class ExperimentConfig(ConfigSection):
    seed: int = Field(42, ge=0, lt=2**32)
    method: Literal["lora", "baseline"] = "lora"
    model: ModelConfig = Field(default_factory=ModelConfig)
    peft: PeftSettings = Field(default_factory=PeftSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)

    def on_device(self, device) -> ExperimentConfig:
        """This config with the choices ``auto`` leaves to the device made (``lora.lora_dropout``): what a run
        on ``device`` computes, fingerprints and records."""
        lora = self.lora.model_copy(update={"lora_dropout": self.lora.dropout_on(device)})
        return self.model_copy(update={"lora": lora})


def deep_merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``overrides`` into a copy of ``base``; nested mappings merge, dotted keys address them."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ValueError(f"config keys must be strings, got {key!r}")
        path = key.split(".")
        target = merged
        for part in path[:-1]:
            child = target.get(part)
            if child is None:
                child = target[part] = {}
            elif not isinstance(child, dict):
                raise ValueError(f"{key}: {part} is not a section")
            target = child
        leaf = path[-1]
        if isinstance(value, Mapping) and isinstance(target.get(leaf), dict):
            target[leaf] = deep_merge(target[leaf], value)
        else:
            target[leaf] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
    return merged


def _format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
    return "invalid experiment config: " + "; ".join(lines)


def read_config_mapping(source: Path | str | Mapping | None) -> dict[str, Any]:
    """A YAML file (or mapping) as a dict; malformed YAML or a non-mapping is a ValueError naming the file."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    return read_yaml_mapping(source, "the experiment config must be a mapping")


def load_experiment_config(
    source: Path | str | Mapping | None = None, overrides: Mapping[str, Any] | None = None
) -> ExperimentConfig:
    """Validated config from a YAML file, a mapping, or the defaults (``None``).

    Missing keys take the defaults of configs/experiment_config.yaml (the same values as
    the model's field defaults); ``overrides`` is deep-merged on top (nested mappings or
    dotted keys such as ``{"training.epochs": 5}``).  Raises ValueError naming the dotted
    key on unknown keys, wrong types or out-of-range values.
    """
    raw = deep_merge(read_config_mapping(source), overrides or {})
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(_format_validation_error(exc)) from None


def config_to_yaml(cfg: ExperimentConfig) -> str:
    """YAML text that ``load_experiment_config`` reads back to an equal config."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=False)
