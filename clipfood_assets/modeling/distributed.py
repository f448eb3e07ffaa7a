"""Multi-process LoRA training with torch.distributed: every process contrasts against the global batch.

Launch one process per device with ``torchrun`` (gloo on CPU, NCCL on CUDA)::

    torchrun --standalone --nproc_per_node=2 -m clipfood_assets.modeling.distributed \\
        --pairs train_pairs_augmented_with_negatives.csv --images-dir ./fine-tuning-zone \\
        --config configs/experiment_config.yaml --base-model ./tiny_clip --out ./runs/ddp

``--images-dir`` is the folder the pairs' ``image_key`` values are relative to (a local copy
of the fine-tuning zone: keys look like ``images/<slug>__<recipeId>_<n>.jpg``); this launcher
reads no lake.  Without ``torchrun`` (no ``WORLD_SIZE``) it trains in one process.

How the work is split, so that N processes compute what one process computes:

- The config keeps its meaning: ``batch_size x gradient_accumulation_steps`` pairs per
  optimizer step, ``batch_size`` pairs per forward pass *summed over the processes*.  Every
  process draws the same seeded order of global batches, takes a contiguous slice of each
  (:func:`shard_bounds`) and encodes it in micro-batches of ``ceil(batch_size / N)``.
- The features (and int64 recipe codes, for same-recipe masking) are all-gathered with an
  autograd-aware gather (:func:`gather_rows`), in rank order: the gathered batch is the
  single-process batch in the same order, so every pair meets every negative of the step.
- Every process computes the same loss over the global batch.  The gather's backward sums
  the feature gradients of all processes (N identical copies) and keeps the local rows; the
  trainable gradients are then averaged (:func:`average_gradients`): the factor N cancels
  and each process holds the single-process gradient, so their optimizer steps agree.
- Only rank 0 writes checkpoints, adapters and logs; the others wait on a barrier.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = [
    "DistributedWorld",
    "GlobalBatch",
    "assert_same_on_all_ranks",
    "average_gradients",
    "broadcast_parameters",
    "gather_contrastive_batch",
    "gather_counts",
    "gather_rows",
    "init_from_env",
    "local_image_loader",
    "local_micro_batch_size",
    "main",
    "shard_bounds",
]


@dataclass(frozen=True)
class DistributedWorld:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None  # None: the default process group

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of {self.world_size} processes")

    @classmethod
    def current(cls) -> DistributedWorld:
        """The default process group when one is initialised, else a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=_env_int("LOCAL_RANK", 0))
        return cls()

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, adapters and logs."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op in one process)."""
        if self.is_distributed:
            dist.barrier(group=self.group)


def shard_bounds(n_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of ``rank``'s contiguous slice of ``n_items``; sizes differ by at most one.

    Slices are in rank order, so concatenating them in rank order gives back the whole
    (as ``numpy.array_split``).
    """
    if n_items < 0 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"cannot shard {n_items} items for rank {rank} of {world_size}")
    base, extra = divmod(n_items, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def local_micro_batch_size(batch_size: int, world: DistributedWorld) -> int:
    """Pairs each process encodes per forward pass: the config's micro-batch split over the processes."""
    return max(1, math.ceil(batch_size / world.world_size))


# --------------------------------------------------------------------------- collectives


def gather_counts(counts: Sequence[int], world: DistributedWorld, device: torch.device | str) -> list[list[int]]:
    """Every process's ``counts`` (same length everywhere), in rank order."""
    local = torch.tensor([int(c) for c in counts], dtype=torch.long, device=device)
    if not world.is_distributed:
        return [local.tolist()]
    buckets = [torch.empty_like(local) for _ in range(world.world_size)]
    dist.all_gather(buckets, local, group=world.group)
    return [b.tolist() for b in buckets]


def _all_gather_padded(tensor: torch.Tensor, counts: Sequence[int], world: DistributedWorld) -> torch.Tensor:
    # all_gather needs equal shapes: pad every process's rows to the longest, then cut.
    width = max(counts)
    if width == 0:  # every process agrees (same counts), so all skip the collective
        return tensor.new_zeros((0, *tensor.shape[1:]))
    padded = tensor.new_zeros((width, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    buckets = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(buckets, padded, group=world.group)
    return torch.cat([bucket[:count] for bucket, count in zip(buckets, counts, strict=True)])


class _GatherRows(torch.autograd.Function):
    """All-gather rows forward; backward sums every process's gradient and keeps the local rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, counts: list[int], world: DistributedWorld) -> torch.Tensor:
        ctx.counts, ctx.world = counts, world
        return _all_gather_padded(tensor, counts, world)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()  # all_reduce works in place
        if grad.shape[0] > 0:
            dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.world.group)
        start = sum(ctx.counts[: ctx.world.rank])
        return grad[start:start + ctx.counts[ctx.world.rank]], None, None


def gather_rows(
    tensor: torch.Tensor, world: DistributedWorld, counts: Sequence[int] | None = None
) -> torch.Tensor:
    """Concatenate every process's ``tensor`` along dim 0, in rank order; row counts may differ.

    ``counts`` (each process's row count) saves a collective when the caller knows them.  For
    floating tensors under grad mode the result is differentiable (open_clip's
    ``gather_with_grad``): the backward all-reduces (sums) the gradient of the gathered rows
    and returns this process's slice, so when every process computes the same loss the local
    rows get ``world_size`` times their gradient (:func:`average_gradients` divides it back).
    The result then always requires grad, even where the local rows do not, because every
    process must take part in the backward all-reduce or the others would wait forever.
    """
    if not world.is_distributed:
        return tensor
    if counts is None:
        counts = [c[0] for c in gather_counts([tensor.shape[0]], world, tensor.device)]
    counts = [int(c) for c in counts]
    if len(counts) != world.world_size or counts[world.rank] != tensor.shape[0]:
        raise ValueError(f"row counts {counts} do not match rank {world.rank}'s {tensor.shape[0]} rows")
    if not (tensor.is_floating_point() and torch.is_grad_enabled()):
        return _all_gather_padded(tensor, counts, world)
    if not tensor.requires_grad:
        tensor = tensor.detach().requires_grad_(True)
    return _GatherRows.apply(tensor, counts, world)


class GlobalBatch(NamedTuple):
    """A step's features and recipe codes gathered from every process, in rank order."""

    image: torch.Tensor
    text: torch.Tensor
    negative: torch.Tensor
    pair_codes: torch.Tensor
    negative_codes: torch.Tensor


def gather_contrastive_batch(
    image: torch.Tensor,
    text: torch.Tensor,
    negative: torch.Tensor,
    pair_codes: torch.Tensor,
    negative_codes: torch.Tensor,
    world: DistributedWorld,
) -> GlobalBatch:
    """The global batch: every process's pairs (image, text, code) and labelled negatives (text, code).

    One all-gather of the counts, one of the codes and one (differentiable) of the features,
    cast to float32 as the loss uses them; so the backward is a single all-reduce whatever the
    autograd engine's order.
    """
    if not world.is_distributed:
        return GlobalBatch(image, text, negative, pair_codes, negative_codes)
    if image.shape[0] != text.shape[0] or image.shape[0] != pair_codes.shape[0] \
            or negative.shape[0] != negative_codes.shape[0]:
        raise ValueError("images, captions and their recipe codes must have one row per pair")
    device = image.device
    counts = gather_counts([image.shape[0], negative.shape[0]], world, device)
    rows = torch.cat([image.float(), text.float(), negative.float()])
    features = gather_rows(rows, world, counts=[2 * n + m for n, m in counts])
    codes = torch.cat([pair_codes, negative_codes]).to(device=device, dtype=torch.long)
    all_codes = gather_rows(codes, world, counts=[n + m for n, m in counts])

    parts: dict[str, list[torch.Tensor]] = {k: [] for k in GlobalBatch._fields}
    row = code = 0
    for n, m in counts:
        parts["image"].append(features[row:row + n])
        parts["text"].append(features[row + n:row + 2 * n])
        parts["negative"].append(features[row + 2 * n:row + 2 * n + m])
        parts["pair_codes"].append(all_codes[code:code + n])
        parts["negative_codes"].append(all_codes[code + n:code + n + m])
        row, code = row + 2 * n + m, code + n + m
    return GlobalBatch(**{k: torch.cat(v) for k, v in parts.items()})


def _by_dtype_and_device(tensors: Iterable[torch.Tensor]) -> dict[tuple, list[torch.Tensor]]:
    groups: dict[tuple, list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    return groups


def average_gradients(parameters: Iterable[torch.nn.Parameter], world: DistributedWorld) -> None:
    """Replace each ``.grad`` with its mean over the processes (one flat all-reduce per dtype).

    Parameters without a gradient are left alone; which ones have one must agree across
    processes (it does: same model, same loss).
    """
    if not world.is_distributed:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    for group in _by_dtype_and_device(grads).values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=world.group)
        flat /= world.world_size
        offset = 0
        for grad in group:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()


def broadcast_parameters(parameters: Iterable[torch.Tensor], world: DistributedWorld, src: int = 0) -> None:
    """Copy rank ``src``'s values of ``parameters`` to every process (replicas start equal)."""
    if not world.is_distributed:
        return
    with torch.no_grad():
        for group in _by_dtype_and_device(parameters).values():
            flat = torch.cat([p.reshape(-1) for p in group])
            dist.broadcast(flat, src=src, group=world.group)
            offset = 0
            for parameter in group:
                parameter.copy_(flat[offset:offset + parameter.numel()].view_as(parameter))
                offset += parameter.numel()


def assert_same_on_all_ranks(value: int, world: DistributedWorld, what: str, device: torch.device | str) -> None:
    """Raise ValueError on every process unless all of them hold the same int64 ``value``."""
    if not world.is_distributed:
        return
    values = [v[0] for v in gather_counts([value], world, device)]
    if len(set(values)) != 1:
        raise ValueError(f"processes disagree on {what}: {values} (rank order)")


# --------------------------------------------------------------------------- launcher


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def init_from_env(device_preference: str = "auto") -> tuple[DistributedWorld, torch.device]:
    """Join the process group that ``torchrun`` describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    Device: ``auto`` is ``cuda:LOCAL_RANK`` when CUDA is present, else the CPU; backend NCCL on
    CUDA, gloo on the CPU.  Without WORLD_SIZE (or with 1) no process group is created.
    """
    world_size, rank, local_rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    world = DistributedWorld(rank=rank, world_size=world_size, local_rank=local_rank)
    if device_preference == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_preference)
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"distributed training runs on cpu or cuda, not {device}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} requested but CUDA is not available")
        torch.cuda.set_device(device)
    if world.is_distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                device_id=device if device.type == "cuda" else None)
    return world, device


def local_image_loader(images_dir: Path | str) -> Callable[[str], bytes]:
    """``load_image(key)`` reading ``images_dir / key``; keys may not lead out of ``images_dir``."""
    root = Path(images_dir).resolve()
    if not root.is_dir():
        raise ValueError(f"images directory {root} does not exist")

    def load_image(key: str) -> bytes:
        path = None if "\x00" in key else (root / key).resolve()  # resolves links: no way out through one
        if path is None or not path.is_relative_to(root) or path == root:
            raise ValueError(f"image key {key!r} is not a file under {root}")
        return path.read_bytes()

    return load_image


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m clipfood_assets.modeling.distributed",
        description="LoRA-fine-tune CLIP on N processes (run under torchrun); every process contrasts "
                    "against the global batch.",
    )
    parser.add_argument("--pairs", required=True, type=Path,
                        help="training pairs CSV: recipe_id, image_key, caption[, label]")
    parser.add_argument("--images-dir", required=True, type=Path,
                        help="folder the pairs' image_key paths are relative to")
    parser.add_argument("--config", type=Path, default=None, help="experiment config YAML (defaults if absent)")
    parser.add_argument("--base-model", default=None, help="base CLIP directory or hub id (default: model.name)")
    parser.add_argument("--out", required=True, type=Path,
                        help="work directory: adapters/, checkpoints/, training_logs.json, config.yaml")
    parser.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if present), cpu or cuda")
    return parser.parse_args(argv)


def _read_pairs(path: Path):
    from clipfood_assets.lake.tables import read_table

    return read_table(Path(path).read_bytes())  # the artifacts' one schema: ids and captions stay text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m clipfood_assets.modeling.distributed`` (one process of the run)."""
    args = _parse_args(argv)
    rank = _env_int("RANK", 0)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(asctime)s %(levelname)s %(name)s: %(message)s")
    # Imported here: train imports this module.
    from clipfood_assets.modeling.config import config_to_yaml, load_experiment_config
    from clipfood_assets.modeling.train import train_lora

    cfg = load_experiment_config(args.config)
    load_image = local_image_loader(args.images_dir)
    train_pairs = _read_pairs(args.pairs)
    world, device = init_from_env(args.device)
    try:
        result = train_lora(args.base_model or cfg.model.name, train_pairs, load_image, cfg,
                            device=device, work_dir=args.out, world=world)
        if world.is_main:
            (args.out / "training_logs.json").write_text(json.dumps(result.training_logs, indent=2),
                                                         encoding="utf-8")
            (args.out / "config.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")
            logger.info("trained on %d processes: %.1f pairs/s, adapters in %s", world.world_size,
                        result.samples_per_s, result.adapter_dir)
        world.barrier()
    finally:
        if world.is_distributed and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    # Run the package module (not this __main__ copy), so train sees the same classes.
    from clipfood_assets.modeling.distributed import main as _main

    sys.exit(_main())
