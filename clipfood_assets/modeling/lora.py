"""LoRA-family adapters on CLIP with peft (LoRA, DoRA, LoHa, LoKr, (IA)^3): apply, count, save, load, merge.

The temperature (``logit_scale``) is not a peft module (``modules_to_save`` takes modules, not a bare
parameter), so it is trained as a plain parameter and written into ``adapter_model.safetensors`` under the
key that peft's own loader puts into ``CLIPModel.logit_scale``: plain ``PeftModel.from_pretrained`` restores
the trained temperature. ``logit_scale.json`` beside it is a readable copy; adapters saved before the tensor
was there hold only that file, and :func:`load_adapted_model` still reads it for them.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import get_args

import torch
from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig, PeftConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPModel, CLIPProcessor

from clipfood_assets.modeling.clip import load_clip
from clipfood_assets.modeling.config import LoraSettings, PeftMethod
from clipfood_assets.modeling.hub import BaseModelSource, adapter_usage, base_model_source, card_data, card_text

LOGIT_SCALE_FILE = "logit_scale.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# peft's set_peft_model_state_dict passes keys without an adapter parameter through to load_state_dict,
# so this one lands in PeftModel.base_model.model.logit_scale.
LOGIT_SCALE_KEY = "base_model.model.logit_scale"
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


def _peft_config(model: torch.nn.Module, lora_cfg: LoraSettings, method: PeftMethod) -> PeftConfig:
    """peft's own config class for ``method``, with the rank, alpha, dropout and layers of ``lora_cfg``."""
    # A regex over exactly these names: peft stores it in adapter_config.json, and it stays
    # short however many layers the model has (a full-name list would be hundreds of entries).
    names = lora_target_modules(model, lora_cfg)
    layer_pattern = "|".join(sorted({re.sub(r"\\\.\d+\\\.", r"\\.\\d+\\.", re.escape(n)) for n in names}))
    targets = f"^(?:{layer_pattern})$"
    dropout = lora_cfg.dropout_on(next(model.parameters()).device)  # auto: none on CUDA
    build = PEFT_METHODS.get(method)
    if build is None:
        raise ValueError(f"unknown peft method {method!r}; expected one of {', '.join(PEFT_METHODS)}")
    return build(lora_cfg, targets, dropout)


def _lora_family(use_dora: bool) -> Callable[[LoraSettings, str, float], PeftConfig]:
    return lambda s, targets, dropout: LoraConfig(r=s.r, lora_alpha=s.lora_alpha, lora_dropout=dropout,
                                                  target_modules=targets, bias=s.bias, use_dora=use_dora)


# peft's config class of each method (as peft's own PEFT_TYPE_TO_CONFIG_MAPPING), filled from the lora
# section: (settings, target-module regex, dropout in effect) -> PeftConfig. config.PeftMethod names the keys.
PEFT_METHODS: dict[PeftMethod, Callable[[LoraSettings, str, float], PeftConfig]] = {
    "lora": _lora_family(use_dora=False),
    "dora": _lora_family(use_dora=True),  # weight-decomposed LoRA
    "loha": lambda s, targets, dropout: LoHaConfig(r=s.r, alpha=s.lora_alpha, rank_dropout=dropout,
                                                   target_modules=targets),
    "lokr": lambda s, targets, dropout: LoKrConfig(r=s.r, alpha=s.lora_alpha, rank_dropout=dropout,
                                                   target_modules=targets),
    # (IA)^3 learns one scaling vector per layer: no rank, alpha or dropout. Attention projections
    # are scaled on their output (no feed-forward layers among the targets).
    "ia3": lambda s, targets, dropout: IA3Config(target_modules=targets, feedforward_modules=[]),
}
if set(PEFT_METHODS) != set(get_args(PeftMethod)):  # a method added to one and not the other fails at import
    raise ImportError(f"lora.PEFT_METHODS {sorted(PEFT_METHODS)} and config.PeftMethod disagree")


def apply_adapters(
    model: CLIPModel, lora_cfg: LoraSettings, *, train_logit_scale: bool = True, method: PeftMethod = "lora"
) -> PeftModel:
    """Wrap ``model`` with peft adapters of ``method`` (a key of :data:`PEFT_METHODS`; base weights
    frozen); ``logit_scale`` trainable if asked. Raises ValueError for an unknown method."""
    with _quiet_peft():
        peft_model = get_peft_model(model, _peft_config(model, lora_cfg, method))
    logit_scale_parameter(peft_model).requires_grad_(train_logit_scale)
    return peft_model


def check_quantization(quantization: str, device: torch.device | str) -> None:
    """QLoRA (4-bit NF4 base via bitsandbytes) runs on CUDA only: refuse it clearly anywhere else."""
    if quantization == "none":
        return
    if torch.device(device).type != "cuda":
        raise ValueError(
            f"peft.quantization: {quantization} (QLoRA) needs a CUDA GPU and bitsandbytes; this run is on "
            f"{torch.device(device).type}. Use peft.quantization: none here."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ValueError("peft.quantization: 4bit needs the bitsandbytes package (pip install bitsandbytes)") from exc


def load_quantized_clip(name_or_path: str, device: torch.device | str) -> CLIPModel:
    """The base CLIP with its Linear layers in 4-bit NF4 (bf16 compute), ready for k-bit training."""
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
    model = CLIPModel.from_pretrained(name_or_path, quantization_config=quantization, use_safetensors=True,
                                      device_map={"": torch.device(device).index or 0})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


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


def _name_base_model_portably(out_dir: Path) -> BaseModelSource:
    """adapter_config.json names the base model by its hub id (and revision) when it is a copy of a Hub
    model; peft wrote the folder it was loaded from, which exists on the training machine only."""
    config_file = out_dir / ADAPTER_CONFIG
    config = json.loads(config_file.read_text(encoding="utf-8"))
    source = base_model_source(config.get("base_model_name_or_path") or "")
    if not source.name:  # a model built from a config names nothing
        return source
    config["base_model_name_or_path"] = source.portable_name
    config["revision"] = config.get("revision") or source.revision
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    return source


def adapter_method(peft_model: PeftModel) -> str:
    """The peft method of ``peft_model``'s adapters as the config names it: lora, dora, loha, lokr or ia3."""
    config = peft_model.peft_config[peft_model.active_adapter]
    return "dora" if getattr(config, "use_dora", False) else str(config.peft_type.value).lower()


def _training_card(source: BaseModelSource, method: str, log_scale: float) -> str:
    data = card_data(source, library_name="peft", tags=["clip", "peft", method, "food", "clipfood"],
                     base_model_relation="adapter" if source.hub_id else None)
    body = f"""# clipfood adapters (peft {method}) for CLIP

peft adapters of a clipfood experiment run on the base model {source.describe()}. The trained temperature
(`logit_scale` {log_scale:.4f}: logits scaled by {math.exp(log_scale):.2f}) is in `adapter_model.safetensors`,
so plain peft restores it:

{adapter_usage(source)}

No test metrics yet: these files are written when training ends. The run's `results_lora.json` holds them,
with paired-bootstrap confidence intervals against the base model; the promoted model's card carries them
as `model-index`.
"""
    return card_text(data, body)


def save_adapters(peft_model: PeftModel, out_dir: Path, logit_scale: float | torch.Tensor,
                  card: str | None = None) -> Path:
    """``save_pretrained`` (safetensors) of the adapters with the trained ``logit_scale`` in the adapter
    file (:data:`LOGIT_SCALE_KEY`), plus ``logit_scale.json`` (log scale and temperature, for people).

    ``adapter_config.json`` names the base model by its hub id when it is a copy of a Hub model
    (:func:`~clipfood_assets.modeling.hub.base_model_source`), else by its folder. ``README.md`` is
    ``card``, by default a Hub card of what is known when training ends (no metrics yet).
    """
    out_dir = Path(out_dir)
    # Adapters never target embeddings (Linear layers only); "auto" would ask the Hub about a hub id.
    peft_model.save_pretrained(out_dir, safe_serialization=True, save_embedding_layers=False)
    source = _name_base_model_portably(out_dir)
    shape = logit_scale_parameter(peft_model).shape
    scale = (logit_scale.detach() if torch.is_tensor(logit_scale) else torch.tensor(logit_scale))
    scale = scale.to("cpu", torch.float32).reshape(shape).clone()
    weights = out_dir / ADAPTER_WEIGHTS
    save_file({**load_file(weights), LOGIT_SCALE_KEY: scale}, weights, metadata={"format": "pt"})
    value = float(scale)
    (out_dir / LOGIT_SCALE_FILE).write_text(
        json.dumps({"logit_scale": value, "temperature": math.exp(-value)}, indent=2), encoding="utf-8"
    )
    # Replaces peft's empty template.
    (out_dir / "README.md").write_text(card or _training_card(source, adapter_method(peft_model), value),
                                       encoding="utf-8")
    return out_dir


def load_adapted_model(
    base_name_or_path: str | Path,
    adapter_dir: Path,
    device: torch.device | str = "cpu",
    merge: bool = True,
) -> tuple[torch.nn.Module, CLIPProcessor]:
    """Base CLIP + saved adapters (``PeftModel.from_pretrained``), merged for inference by default.

    peft restores the trained ``logit_scale`` from the adapter file; adapters saved before it was
    there get it from their ``logit_scale.json``.
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no adapter_config.json (not a saved adapter)")
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ValueError(f"{adapter_dir} has no adapter_model.safetensors; pickle adapters are refused")
    model, processor = load_clip(base_name_or_path, "cpu")
    with _quiet_peft():
        adapted: torch.nn.Module = PeftModel.from_pretrained(model, str(adapter_dir))
    with safe_open(weights, "pt") as stored:
        scale_in_weights = LOGIT_SCALE_KEY in stored.keys()
    scale_file = adapter_dir / LOGIT_SCALE_FILE
    if not scale_in_weights and scale_file.is_file():
        value = float(json.loads(scale_file.read_text(encoding="utf-8"))["logit_scale"])
        with torch.no_grad():
            logit_scale_parameter(adapted).fill_(value)
    if merge:
        adapted = adapted.merge_and_unload()
    adapted.to(torch.device(device)).eval()
    return adapted, processor


# --------------------------------------------------------------------------- bf16 compute layout


def hold_base_in(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast the frozen base of a plain or peft-wrapped CLIP to ``dtype`` in place; the adapters and
    ``logit_scale`` stay fp32. Training and evaluation both call it, so validation and the test
    evaluation run the same weights the same way (unmerged: a delta merged before the cast is rounded
    into bf16 weights, one the training never used). A bf16 round trip would also move a pretrained
    ``logit_scale`` of 4.6052 to 4.59375 (a temperature of 98.9, not 100)."""
    prefix = model.base_model.prefix if isinstance(model, PeftModel) else None
    temperature = logit_scale_parameter(model)
    for name, parameter in model.named_parameters():
        if parameter is temperature or not parameter.is_floating_point() or (prefix and prefix in name):
            continue
        parameter.data = parameter.data.to(dtype)
    return model


def cast_adapter_inputs(model: torch.nn.Module, enabled: bool) -> None:
    """Whether peft copies each adapter's input to the adapters' dtype (fp32) before using it
    (``lora.fp32_inputs``). Under bf16 autocast the adapter's matmul casts that copy straight back to
    bf16: without it the input stays in the compute dtype, one pass over it saved per projection."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = enabled
