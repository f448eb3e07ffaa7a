"""torch.distributed for LoRA training: every process contrasts against the global batch.

The collectives and the process's place in the world; the ``torchrun`` launcher is
:mod:`clipfood_assets.modeling.launch`.

How the work is split, so that N processes compute what one process computes:

- The config keeps its meaning: ``effective_batch_size`` pairs per optimizer step, the
  micro-batch (``batch_size``) pairs per forward pass *summed over the processes*.  Every
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

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

__all__ = [
    "DistributedWorld",
    "GlobalBatch",
    "assert_same_on_all_ranks",
    "average_gradients",
    "broadcast_parameters",
    "gather_contrastive_batch",
    "gather_counts",
    "gather_rows",
    "local_micro_batch_size",
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
