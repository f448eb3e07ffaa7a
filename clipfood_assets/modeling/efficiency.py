"""Efficiency measurement: peak memory, device synchronisation, CPU thread configuration."""

from __future__ import annotations

import os
import resource
import sys

import torch

from clipfood_assets.settings import THREADS_ENV, ClipfoodSettings  # noqa: F401  (THREADS_ENV: the variable's name, for callers)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS has no sched_getaffinity
        return os.cpu_count() or 1


def configure_cpu_threads(device: torch.device | str | None = None) -> int:
    """Size torch's intra-op pool for a CPU run: ``$CLIPFOOD_TORCH_THREADS``, else
    ``$OMP_NUM_THREADS``, else every core this process may run on.

    Returns the thread count in effect.  On CUDA the host threads mostly wait, so it is left
    alone.  On a machine shared with other busy processes, fewer threads than cores is much
    faster: OpenMP threads spin-wait for each other and a descheduled one stalls every op.
    """
    if device is not None and torch.device(device).type != "cpu":
        return torch.get_num_threads()
    cores = ClipfoodSettings.from_env().cpu_threads or available_cores()
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
    return cores


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak-memory window (CUDA only: the process RSS peak cannot be reset)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device | str) -> tuple[int, str]:
    """(bytes, kind): CUDA max allocated since the last reset, else the process's peak RSS.

    ``kind`` is ``"cuda_max_allocated"`` or ``"process_peak_rss"``; the latter covers the whole
    process lifetime (model, data and Python), so compare it only between like runs.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    if device.type == "mps" and hasattr(torch, "mps"):
        return int(torch.mps.driver_allocated_memory()), "mps_driver_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(peak if sys.platform == "darwin" else peak * 1024), "process_peak_rss"


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work so that timings measure it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
