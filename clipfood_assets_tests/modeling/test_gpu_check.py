"""benchmarks/gpu_check.py runs end to end (the CPU variant of a GPU session's one call), compiled as a
GPU session compiles it, and prints, last, every figure a CPU can measure and dynamo's count of graphs."""

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
CUDA_ONLY = {"lora_mfu", "gpu_busy"}


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_check_small_compiled_prints_every_cpu_figure_and_never_falls_back(tmp_path):
    env = {**os.environ, "CLIPFOOD_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    # Dynamo's eager backend: every training and evaluation of the sequence compiled (graphs, guards and
    # recompiles as with inductor), without minutes of kernel generation on this CPU.
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--images", "96", "--batches", "8,16", "--steps", "2",
         "--epochs", "2", "--compile-backend", "eager"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAILED" not in done.stdout, done.stdout[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    script = _script()
    assert {*script.FIGURES, *script.CUDA_FIGURES, *script.DYNAMO_FIGURES} <= set(figures)
    assert figures["device"].startswith("cpu")
    for key in set(script.FIGURES) - CUDA_ONLY - {"device"}:
        assert isinstance(figures[key], (int, float)) and figures[key] > 0, (key, figures)
    assert figures["store_epoch_speedup"] > 1  # the packed store is read faster than JPEGs are decoded
    # More graphs than dynamo's default room (8) over the sequence, none of them given up on.
    assert figures["dynamo_graphs"] > 8, figures
    assert figures["dynamo_fallbacks"] == 0 and figures["dynamo_graph_breaks"] == 0, figures
    assert figures["eval_compiled_forward_img_per_s"] > 0
    assert figures["lora_fp32_inputs_pairs_per_s"] is None  # a CUDA choice: a no-op in fp32
