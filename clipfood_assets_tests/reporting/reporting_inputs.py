"""Fabricated but internally consistent report inputs (helpers; the fixture is in conftest.py): M0, a better run and a worse run.

Metrics and confidence intervals are computed here from first-hit ranks with a tiny local
helper (not the modeling code), so the expected verdicts follow from the ranks themselves.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from clipfood_assets.reporting import RunArtifacts

N_QUERIES = 30
N_BOOT = 300
DIRECTIONS = ("text_to_image", "image_to_text")


def rank_metrics(ranks: np.ndarray) -> dict[str, float]:
    """Recipe-level retrieval metrics from first-hit ranks (1-based)."""
    ranks = np.asarray(ranks, dtype=float)
    return {
        "R@1": float(np.mean(ranks <= 1)),
        "R@5": float(np.mean(ranks <= 5)),
        "R@10": float(np.mean(ranks <= 10)),
        "MRR": float(np.mean(1.0 / ranks)),
        "MedianRank": float(np.median(ranks)),
        "MeanRank": float(np.mean(ranks)),
    }


def bootstrap_intervals(ranks: np.ndarray, seed: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    draws = [rank_metrics(ranks[rng.integers(0, len(ranks), len(ranks))]) for _ in range(N_BOOT)]
    return {m: [float(np.percentile([d[m] for d in draws], 2.5)), float(np.percentile([d[m] for d in draws], 97.5))]
            for m in draws[0]}


def paired_comparison(m0: np.ndarray, m1: np.ndarray, seed: int) -> dict[str, dict[str, Any]]:
    """M1 - M0 per metric with a paired bootstrap (same resampled queries for both models)."""
    rng = np.random.default_rng(seed)
    base, run = rank_metrics(m0), rank_metrics(m1)
    diffs: dict[str, list[float]] = {m: [] for m in base}
    for _ in range(N_BOOT):
        idx = rng.integers(0, len(m0), len(m0))
        a, b = rank_metrics(m0[idx]), rank_metrics(m1[idx])
        for m in base:
            diffs[m].append(b[m] - a[m])
    return {m: {"m0": base[m], "m1": run[m], "diff": run[m] - base[m],
                "ci": [float(np.percentile(diffs[m], 2.5)), float(np.percentile(diffs[m], 97.5))]} for m in base}


def image_key(recipe: str, position: int = 0) -> str:
    return f"images/dish_{recipe}__{recipe}_{position}.jpg"


def caption(recipe: str) -> str:
    return f"Dish {recipe} with roasted vegetables"


def queries(direction: str) -> list[str]:
    recipes = [f"r{i:02d}" for i in range(N_QUERIES)]
    return recipes if direction == "text_to_image" else [image_key(r) for r in recipes]


def results_dict(model: str, ranks: dict[str, np.ndarray], seed: int,
                 baseline_ranks: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "model": model, "n_pairs": N_QUERIES, "n_recipes": N_QUERIES, "n_images": N_QUERIES,
        "metrics": {d: rank_metrics(ranks[d]) for d in DIRECTIONS},
        "confidence_intervals": {d: bootstrap_intervals(ranks[d], seed + i) for i, d in enumerate(DIRECTIONS)},
        "first_hit_ranks": {d: {"queries": queries(d), "ranks": [int(r) for r in ranks[d]]} for d in DIRECTIONS},
        "efficiency": {"images_per_s": 120.0 + seed, "texts_per_s": 900.0 + seed, "peak_memory_bytes": 350 * 2**20,
                       "peak_memory_kind": "cpu_rss", "device": "cpu", "total_parameters": 1_200_000,
                       "trainable_parameters": 1_200_000 if model == "M0" else 24_576},
    }
    if baseline_ranks is not None:
        result["efficiency"]["training_time_s"] = 12.5 + seed
        comparison = {d: paired_comparison(baseline_ranks[d], ranks[d], seed + 10 + i)
                      for i, d in enumerate(DIRECTIONS)}
        primary_ci = comparison["text_to_image"]["R@1"]["ci"]
        result["comparison_to_baseline"] = {**comparison, "h1_supported": primary_ci[0] > 0,
                                            "primary_metric": "text_to_image/R@1"}
    return result


def examples(ranks: dict[str, np.ndarray], n: int = 4) -> list[dict[str, Any]]:
    """Top-5 lists consistent with the first-hit ranks: the query's recipe sits at its first-hit rank."""
    out = []
    recipes = [f"r{i:02d}" for i in range(N_QUERIES)]
    for direction in DIRECTIONS:
        for q in range(n):
            recipe, first = recipes[q], int(ranks[direction][q])
            others = [r for r in recipes if r != recipe]
            top = []
            for position in range(1, 6):
                hit_recipe = recipe if position == first else others[(q + position) % len(others)]
                key = image_key(hit_recipe) if direction == "text_to_image" else caption(hit_recipe)
                top.append({"key": key, "recipe_id": hit_recipe, "score": round(0.9 - 0.1 * position, 3),
                            "hit": hit_recipe == recipe})
            query = caption(recipe) if direction == "text_to_image" else image_key(recipe)
            out.append({"direction": direction, "query": query, "query_recipe_id": recipe, "top": top,
                        "first_hit_rank": first})
    return out


def training_logs(seed: int, n_steps: int = 20) -> dict[str, Any]:
    steps = [{"step": s, "epoch": 1 + s // 10, "loss": 3.0 / (1 + 0.2 * s) + 0.01 * seed,
              "lr": 5e-5, "temperature": 0.07 - 0.001 * s, "samples_per_s": 200.0, "elapsed_s": 0.5 * s}
             for s in range(n_steps)]
    return {"steps": steps,
            "epochs": [{"epoch": 1, "avg_loss": 2.0, "time_s": 5.0}, {"epoch": 2, "avg_loss": 1.2, "time_s": 5.1}],
            "total_time_s": 10.1, "negatives_per_pair": 31, "effective_batch_size": 32}


def run_config(r: int, lr: float) -> dict[str, Any]:
    return {"lora": {"r": r, "lora_alpha": 2 * r, "lora_dropout": 0.05},
            "training": {"epochs": 2, "learning_rate": lr, "loss": "infonce"}}


def tiny_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


@dataclass
class Inputs:
    baseline: dict[str, Any]
    baseline_examples: list[dict[str, Any]]
    runs: dict[str, RunArtifacts]
    ranks: dict[str, dict[str, np.ndarray]]  # model -> direction -> first-hit ranks
    load_image: Callable[[str], bytes]


def make_inputs() -> Inputs:
    rng = np.random.default_rng(42)
    m0, better, worse = {}, {}, {}
    for direction in DIRECTIONS:
        # A third of the queries hit at rank 1 under M0, the rest somewhere in 2..20.
        base = np.concatenate([np.ones(10, dtype=int), rng.integers(2, 21, N_QUERIES - 10)])
        rng.shuffle(base)
        # Better run: everything at rank 1 except three queries it makes worse.
        up = np.ones(N_QUERIES, dtype=int)
        up[:3] = base[:3] + 5
        # Worse run: every query two ranks lower, except two it improves.
        down = base + 2
        down[3:5] = 1
        m0[direction], better[direction], worse[direction] = base, up, down
    baseline = results_dict("M0", m0, seed=1)
    images = {image_key(f"r{i:02d}"): tiny_jpeg(i) for i in range(N_QUERIES)}

    def load_image(key: str) -> bytes:
        return images[key]

    runs = {
        "better": RunArtifacts(results=results_dict("M1", better, 2, m0), examples=examples(better),
                               training_logs=training_logs(2), config=run_config(8, 5e-5)),
        "worse": RunArtifacts(results=results_dict("M1", worse, 3, m0), examples=examples(worse),
                              training_logs=training_logs(3), config=run_config(4, 1e-3)),
    }
    return Inputs(baseline, examples(m0), runs, {"M0": m0, "better": better, "worse": worse}, load_image)
