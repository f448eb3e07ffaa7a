"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

Layout: ``<root>/step_<n>/`` holding ``trainable.safetensors`` (adapter weights and the
logit scale), ``optimizer.safetensors`` (optimizer state tensors, flattened to
``state.<param index>.<name>``), ``rng.safetensors`` (torch/CUDA/numpy generator states)
and ``state.json`` (step, epoch, data position, scheduler, optimizer scalars, python RNG,
logs...).  ``COMPLETE`` is written last: a directory without it is a crash mid-write and
is ignored by :func:`latest_checkpoint`.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
BEST_FILE = "best.safetensors"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def _json_safe(value: Any) -> Any:
    """Tuples to lists, numpy/torch scalars to Python; fails loudly on anything else."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if torch.is_tensor(value) and value.numel() == 1:
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in a JSON checkpoint")


# --------------------------------------------------------------------------- optimizer

def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = _json_safe(value)
    meta = {"param_groups": _json_safe(state_dict["param_groups"]), "scalars": scalars}
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, entries in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------- RNG

def _rng_tensors_and_meta() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    meta = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss},
    }
    return tensors, meta


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda_")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    numpy_meta = meta["numpy"]
    np.random.set_state((
        numpy_meta["kind"], tensors["numpy_keys"].numpy().astype(np.uint32), numpy_meta["pos"],
        numpy_meta["has_gauss"], numpy_meta["cached_gaussian"],
    ))
    python_meta = meta["python"]
    random.setstate((python_meta["version"], tuple(python_meta["internal"]), python_meta["gauss_next"]))


# --------------------------------------------------------------------------- save / load

def save_checkpoint(
    root: Path,
    step: int,
    *,
    trainable: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    state: Mapping[str, Any],
    scaler: torch.amp.GradScaler | None = None,
    keep: int | None = None,
    best: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``<root>/step_<step>/`` (``COMPLETE`` last) and prune to the ``keep`` most recent.

    ``best``: the trainable tensors of the best validation so far (``best.safetensors``), so a
    resumed run still ends with them."""
    root = Path(root)
    directory = root / f"step_{step}"
    if directory.exists():
        shutil.rmtree(directory)  # an incomplete or stale attempt at the same step
    directory.mkdir(parents=True)

    save_file({name: t.detach().cpu().contiguous() for name, t in trainable.items()},
              str(directory / "trainable.safetensors"))
    optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer)
    save_file(optimizer_tensors, str(directory / "optimizer.safetensors"))
    rng_tensors, rng_meta = _rng_tensors_and_meta()
    save_file(rng_tensors, str(directory / "rng.safetensors"))
    if best:
        save_file({name: t.detach().cpu().contiguous() for name, t in best.items()}, str(directory / BEST_FILE))
    document = {
        "step": int(step),
        "state": _json_safe(dict(state)),
        "optimizer": optimizer_meta,
        "scheduler": _json_safe(scheduler.state_dict()) if scheduler is not None else None,
        "scaler": _json_safe(scaler.state_dict()) if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_meta,
    }
    (directory / "state.json").write_text(json.dumps(document), encoding="utf-8")
    (directory / COMPLETE_MARKER).write_text("ok\n", encoding="utf-8")
    if keep is not None:
        prune_checkpoints(root, keep)
    return directory


def load_best_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The best-validation tensors saved with a checkpoint (empty when there were none)."""
    path = Path(directory) / BEST_FILE
    return load_file(str(path)) if path.is_file() else {}


def checkpoint_steps(root: Path, *, complete_only: bool = True) -> list[tuple[int, Path]]:
    """(step, directory) of the checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (not complete_only or (child / COMPLETE_MARKER).is_file()):
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    """The most recent complete checkpoint directory, or None."""
    found = checkpoint_steps(root)
    return found[-1][1] if found else None


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recent complete checkpoints, and incomplete ones older than those."""
    complete = checkpoint_steps(root)
    for _, directory in complete[:-keep] if keep > 0 else complete:
        shutil.rmtree(directory, ignore_errors=True)
    newest = complete[-1][0] if complete else None
    for step, directory in checkpoint_steps(root, complete_only=False):
        if newest is not None and step < newest and not (directory / COMPLETE_MARKER).is_file():
            shutil.rmtree(directory, ignore_errors=True)


def load_checkpoint(
    directory: Path,
    *,
    trainable: Mapping[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scaler: torch.amp.GradScaler | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler, scaler and RNGs in place; return the saved ``state``."""
    directory = Path(directory)
    if not (directory / COMPLETE_MARKER).is_file():
        raise ValueError(f"{directory} is not a complete checkpoint")
    document = json.loads((directory / "state.json").read_text(encoding="utf-8"))

    weights = load_file(str(directory / "trainable.safetensors"))
    if set(weights) != set(trainable):
        raise ValueError(
            f"checkpoint {directory} does not match the model: missing {sorted(set(trainable) - set(weights))[:3]}, "
            f"unexpected {sorted(set(weights) - set(trainable))[:3]}"
        )
    with torch.no_grad():
        for name, parameter in trainable.items():
            if weights[name].shape != parameter.shape:
                raise ValueError(f"checkpoint {directory}: {name} has shape {tuple(weights[name].shape)}, "
                                 f"model has {tuple(parameter.shape)}")
            parameter.copy_(weights[name].to(parameter.device, parameter.dtype))

    optimizer.load_state_dict(
        _unflatten_optimizer(load_file(str(directory / "optimizer.safetensors")), document["optimizer"])
    )
    if scheduler is not None and document["scheduler"] is not None:
        scheduler.load_state_dict(document["scheduler"])
    if scaler is not None and document.get("scaler"):
        scaler.load_state_dict(document["scaler"])
    if restore_rng:
        _restore_rng(load_file(str(directory / "rng.safetensors")), document["rng"])
    logger.info("resumed from %s (step %d)", directory, document["step"])
    return document["state"]


def upload_checkpoint(lake, bucket: str, prefix: str, directory: Path, keep: int) -> None:
    """Mirror one complete checkpoint folder into the lake under ``prefix`` and prune old ones.

    ``COMPLETE`` goes up last, so a checkpoint cut off mid-upload is ignored on resume, as a
    local one cut off mid-write is.
    """
    files = sorted((p for p in Path(directory).rglob("*") if p.is_file()), key=lambda p: p.name == COMPLETE_MARKER)
    for path in files:
        lake.put_file(bucket, f"{prefix}{directory.name}/{path.relative_to(directory).as_posix()}", path)
    steps = sorted({int(m.group(1)) for o in lake.list(bucket, prefix)
                    if (m := _STEP_DIR.match(o.key[len(prefix):].split("/")[0]))})
    for step in steps[:-keep]:
        lake.delete_prefix(bucket, f"{prefix}step_{step}/")


def download_checkpoints(lake, bucket: str, prefix: str, root: Path) -> int:
    """Fetch every checkpoint under ``prefix`` into ``root``; returns the number of files."""
    n = 0
    for obj in lake.list(bucket, prefix):
        lake.get_file(bucket, obj.key, Path(root) / obj.key[len(prefix):])
        n += 1
    return n
