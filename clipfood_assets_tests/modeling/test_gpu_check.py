"""benchmarks/gpu_check.py runs end to end (the CPU variant of a GPU session's one call) and
prints, last, every figure a CPU can measure."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"
# Figures that need CUDA (MFU against a GPU's peak, NVML's busy time).
CUDA_ONLY = {"lora_mfu", "gpu_busy", "lora_no_dropout_pairs_per_s"}


def _figure_keys() -> tuple[str, ...]:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FIGURES


@pytest.mark.slow
def test_gpu_check_small_prints_every_cpu_figure(tmp_path):
    env = {**os.environ, "CLIPFOOD_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--images", "96", "--batches", "8,16", "--steps", "2",
         "--epochs", "2"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAILED" not in done.stdout, done.stdout[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    keys = _figure_keys()
    assert set(keys) <= set(figures)
    assert figures["device"].startswith("cpu")
    for key in set(keys) - CUDA_ONLY - {"device"}:
        assert isinstance(figures[key], (int, float)) and figures[key] > 0, (key, figures)
    assert figures["store_epoch_speedup"] > 1  # the packed store is read faster than JPEGs are decoded
