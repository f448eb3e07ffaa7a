"""Loading CLIP (hub id or local directory, one code path), devices, mixed precision and compiled towers."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from transformers import CLIPModel, CLIPProcessor

logger = logging.getLogger(__name__)

# torch.compile backend of compile_towers. Tests swap in "eager" (gpu_check --compile-backend any): dynamo's
# graphs, guards and recompiles are the same, without generating kernels.
COMPILE_BACKEND = "inductor"
# Rows of a compiled tower's batch come in multiples of this, so no batch is ever 1 row: dynamo specialises
# a size of 1 into a graph of its own even on a dimension marked dynamic.
PAD_ROWS = 8
# Graphs dynamo may keep per code object (its default, 8, was spent by one run with validation). Both towers
# run the one transformers wrapper and so share its cache: per model, training with grad, the feature
# cache's no-grad pass and evaluation for each tower make up to 6, and a process may compile several
# models (gpu_check's sequence: 9 graphs). Shapes add none: batch and caption length are dynamic from the
# first call. test_compile.py and test_gpu_check.py count them.
RECOMPILE_LIMIT = 64

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
    """``training.compile``: auto compiles on CUDA only (CPU runs stay eager and bit-reproducible)."""
    return setting == "on" or (setting == "auto" and torch.device(device).type == "cuda")


def compile_towers(model) -> None:
    """``torch.compile`` the vision and text towers of a plain or peft-wrapped CLIP in place
    (parameter names unchanged, so adapters save and checkpoints load as in eager mode).

    Call them inside :func:`compiled_region` with inputs from :func:`dynamic_rows`: one graph per tower
    and mode for every batch size and caption length."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # Random ops from eager kernels when the model has any: dropout masks then come from torch's
    # generator, so the feature cache's replay (which restores its state) draws the same masks. An option
    # of these two compiles, not inductor's process-wide config.
    options = {"fallback_random": True} if COMPILE_BACKEND == "inductor" and _has_dropout(base) else None
    for tower in (base.vision_model, base.text_model):
        tower.compile(backend=COMPILE_BACKEND, options=options)


def _has_dropout(model) -> bool:
    attention = (getattr(c, "attention_dropout", 0.0) for c in (model.config.text_config, model.config.vision_config))
    return any(attention) or any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def towers_compiled(model) -> bool:
    """Whether :func:`compile_towers` compiled this (plain or peft-wrapped) CLIP's towers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base.vision_model, "_compiled_call_impl", None) is not None


def dynamic_rows(tensor: torch.Tensor, dynamic_dims: tuple[int, ...] = (0,)) -> torch.Tensor:
    """``tensor`` for a compiled tower: its first row repeated up to a multiple of :data:`PAD_ROWS` rows
    (the caller drops the extra outputs) and ``dynamic_dims`` marked dynamic before the first compile."""
    import torch._dynamo

    extra = -tensor.shape[0] % PAD_ROWS
    if extra:
        tensor = torch.cat([tensor, tensor[:1].expand(extra, *tensor.shape[1:])])
    torch._dynamo.mark_dynamic(tensor, list(dynamic_dims))
    return tensor


@contextlib.contextmanager
def compiled_region(what: str):
    """Where compiled towers run: room for every graph a process makes (:data:`RECOMPILE_LIMIT`), an error
    instead of dynamo's silent fall-back to eager (2-3x slower, nothing said) when the room runs out, and
    a warning naming graph breaks. Scoped: dynamo's settings are restored on the way out."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    breaks = sum(counters["graph_break"].values())
    try:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True,
                                        suppress_errors=False):
            yield
    except torch._dynamo.exc.FailOnRecompileLimitHit as exc:
        raise RuntimeError(
            f"torch.compile ran out of room for graphs in {what} ({RECOMPILE_LIMIT} per code object) and would "
            "go on in eager mode, 2-3x slower; TORCH_LOGS=recompiles names the inputs that keep recompiling. "
            "Set training.compile / evaluation.compile to off to run eager on purpose"
        ) from exc
    added = sum(counters["graph_break"].values()) - breaks
    if added:
        reasons = ", ".join(list(counters["graph_break"])[-3:])
        logger.warning("torch.compile split %s at %d graph break(s) (%s): the pieces between them run compiled, "
                       "the breaks in Python", what, added, reasons)
