"""Loading CLIP (hub id or local directory, one code path), devices and mixed precision."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from transformers import CLIPModel, CLIPProcessor

_OFFLINE_HELP = (
    "Could not load CLIP model {name!r}: the model hub is unreachable and no local copy exists "
    "({error}). Set the platform's base model: `clipfood base-model` builds the small offline one "
    "and records it, `clipfood base-model --use DIR_OR_HUB_ID` records another (CLIPFOOD_BASE_MODEL "
    "overrides both); `clipfood base-model --show` says which one is in use."
)


def _refuse_pickle_only(path: Path) -> None:
    has_safetensors = any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json"))
    pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
    if not has_safetensors:
        found = f" (found {', '.join(sorted(pickled))})" if pickled else ""
        raise ValueError(
            f"{path} has no safetensors weights{found}; pickle checkpoints are refused because "
            "loading them can run arbitrary code. Convert with `save_pretrained(..., safe_serialization=True)`."
        )


def load_clip(name_or_path: str | Path, device: torch.device | str = "cpu") -> tuple[CLIPModel, CLIPProcessor]:
    """CLIP model (eval mode, on ``device``) and its processor from a hub id or a local directory.

    Only safetensors weights are accepted.  A hub id that cannot be fetched (offline, no
    cache) raises RuntimeError explaining how to use a local model instead.
    """
    name = str(name_or_path)
    local = Path(name).expanduser()
    if local.is_dir():
        _refuse_pickle_only(local)
        name = str(local)
    elif local.exists():
        raise ValueError(f"{local} is a file; expected a model directory or a hub id")
    with _explained_load_errors(name, local):
        model = CLIPModel.from_pretrained(name, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(name)
    model.to(torch.device(device)).eval()
    return model, processor


def load_processor(name_or_path: str | Path) -> CLIPProcessor:
    """Only the processor (tokenizer + image preprocessing) of a CLIP hub id or local directory,
    no weights; an unreachable hub id raises the same RuntimeError as :func:`load_clip`."""
    name = str(name_or_path)
    local = Path(name).expanduser()
    with _explained_load_errors(name, local):
        return CLIPProcessor.from_pretrained(str(local) if local.is_dir() else name)


@contextlib.contextmanager
def _explained_load_errors(name: str, local: Path):
    """A hub id that cannot be fetched becomes one line naming the model and how to set another."""
    try:
        yield
    except OSError as exc:
        if local.is_dir():
            raise
        if "safetensors" in str(exc).lower() and ".bin" in str(exc):
            raise ValueError(f"{name}: only pickle weights are published; refusing to load them") from exc
        raise RuntimeError(_OFFLINE_HELP.format(name=name, error=str(exc).splitlines()[0][:200])) from exc


def resolve_device(pref: str = "auto") -> torch.device:
    """``auto``: CUDA if present, then Apple MPS, then CPU; otherwise the named device."""
    if pref != "auto":
        device = torch.device(pref)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {pref!r} requested but CUDA is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(device: torch.device | str, precision: str = "auto") -> str:
    """The precision actually used: ``auto`` means bf16 (fp16 if unsupported) on CUDA, fp32 elsewhere.

    bf16 on CPUs without native support runs several times slower than fp32, so CPUs get fp32.
    """
    device = torch.device(device)
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def autocast_context(device: torch.device | str, precision: str = "auto") -> contextlib.AbstractContextManager:
    """Mixed-precision autocast for bf16/fp16 (CUDA; explicit on CPU), a no-op for fp32."""
    device = torch.device(device)
    resolved = resolve_precision(device, precision)
    if resolved == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if resolved == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def describe_device(device: torch.device | str) -> str:
    """Human-readable device description for reports (GPU name or CPU thread count)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({torch.get_num_threads()} threads, torch {torch.__version__})"


def compile_enabled(setting: str, device: torch.device | str) -> bool:
    """``training.compile`` / ``evaluation.compile``: auto compiles on CUDA only (CPU runs stay eager
    and bit-reproducible)."""
    return setting == "on" or (setting == "auto" and torch.device(device).type == "cuda")


def compile_towers(model) -> None:
    """``torch.compile`` the vision and text towers of a plain or peft-wrapped CLIP in place
    (parameter names unchanged, so adapters save and checkpoints load as in eager mode)."""
    import torch._inductor.config as inductor_config

    # Random ops from eager kernels: dropout masks then come from torch's generator, so the
    # feature cache's replay (which restores its state) draws the same masks.
    inductor_config.fallback_random = True
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for tower in (base.vision_model, base.text_model):
        # Default dynamism: a second batch shape (the text batch varies with the labelled
        # negatives, an epoch's last step is short) compiles one shape-generic graph.
        tower.compile()
