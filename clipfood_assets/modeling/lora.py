"""LoRA adapters on CLIP with peft: apply, count, save, load and merge.

The temperature (``logit_scale``) is not a peft module; it stays a separately trained
parameter and is saved beside the adapters as ``logit_scale.json``.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import CLIPModel, CLIPProcessor

from clipfood_assets.modeling.clip import load_clip
from clipfood_assets.modeling.config import LoraSettings

LOGIT_SCALE_FILE = "logit_scale.json"
_TOWER_PREFIX = {"vision": ("vision_model.",), "text": ("text_model.",), "both": ("vision_model.", "text_model.")}


@contextmanager
def _quiet_peft():
    # peft calls a transformers 5 deprecated alias; nothing the caller can act on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def lora_target_modules(model: torch.nn.Module, lora_cfg: LoraSettings) -> list[str]:
    """Full names of the Linear layers to adapt: name ends in a target and sits in the scoped tower(s)."""
    prefixes = _TOWER_PREFIX[lora_cfg.scope]
    wanted = set(lora_cfg.target_modules)
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.rsplit(".", 1)[-1] in wanted
        and name.startswith(prefixes)
    ]
    if not names:
        raise ValueError(
            f"no Linear layer named {sorted(wanted)} in the {lora_cfg.scope} tower(s); "
            "check lora.target_modules against the model's module names"
        )
    return names


def _lora_config(model: torch.nn.Module, lora_cfg: LoraSettings) -> LoraConfig:
    # A regex over exactly these names: peft stores it in adapter_config.json, and it stays
    # short however many layers the model has (a full-name list would be hundreds of entries).
    names = lora_target_modules(model, lora_cfg)
    layer_pattern = "|".join(sorted({re.sub(r"\\\.\d+\\\.", r"\\.\\d+\\.", re.escape(n)) for n in names}))
    return LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.lora_alpha,
        lora_dropout=lora_cfg.lora_dropout,
        target_modules=f"^(?:{layer_pattern})$",
        bias=lora_cfg.bias,
    )


def apply_lora(model: CLIPModel, lora_cfg: LoraSettings, *, train_logit_scale: bool = True) -> PeftModel:
    """Wrap ``model`` with LoRA adapters (base weights frozen); ``logit_scale`` trainable if asked."""
    with _quiet_peft():
        peft_model = get_peft_model(model, _lora_config(model, lora_cfg))
    logit_scale_parameter(peft_model).requires_grad_(train_logit_scale)
    return peft_model


def logit_scale_parameter(model: torch.nn.Module) -> torch.nn.Parameter:
    """The CLIP ``logit_scale`` parameter of a plain or peft-wrapped model."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return base.logit_scale


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; adapters count in the total, as peft reports."""
    trainable = total = 0
    for parameter in model.parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total


def save_adapters(peft_model: PeftModel, out_dir: Path, logit_scale: float | torch.Tensor) -> Path:
    """``save_pretrained`` (safetensors) of the adapters plus ``logit_scale.json`` (log scale)."""
    out_dir = Path(out_dir)
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    value = float(logit_scale.detach().float().cpu()) if torch.is_tensor(logit_scale) else float(logit_scale)
    (out_dir / LOGIT_SCALE_FILE).write_text(
        json.dumps({"logit_scale": value, "temperature": math.exp(-value)}, indent=2), encoding="utf-8"
    )
    return out_dir


def load_adapted_model(
    base_name_or_path: str | Path,
    adapter_dir: Path,
    device: torch.device | str = "cpu",
    merge: bool = True,
) -> tuple[torch.nn.Module, CLIPProcessor]:
    """Base CLIP + saved adapters (``PeftModel.from_pretrained``), merged for inference by default.

    The trained ``logit_scale`` is restored from ``logit_scale.json`` when present.
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no adapter_config.json (not a saved adapter)")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise ValueError(f"{adapter_dir} has no adapter_model.safetensors; pickle adapters are refused")
    model, processor = load_clip(base_name_or_path, "cpu")
    with _quiet_peft():
        adapted: torch.nn.Module = PeftModel.from_pretrained(model, str(adapter_dir))
    scale_file = adapter_dir / LOGIT_SCALE_FILE
    if scale_file.is_file():
        value = float(json.loads(scale_file.read_text(encoding="utf-8"))["logit_scale"])
        with torch.no_grad():
            logit_scale_parameter(adapted).fill_(value)
    if merge:
        adapted = adapted.merge_and_unload()
    adapted.to(torch.device(device)).eval()
    return adapted, processor
