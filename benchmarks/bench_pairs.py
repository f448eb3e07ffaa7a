"""Benchmark: positive pairs + recipe-level split on a large synthetic trusted-zone manifest.

Builds 1,000,000 recipes.jsonl lines and 3,000,000 image keys in memory (keys only, no image
bytes), then times parse_recipes -> parse_image_keys -> build_positive_pairs -> split_by_recipe.
Prints the median wall time over repeats and the process's peak RSS next to the targets, and a
reference: the original notebooks' per-recipe pandas filter loop, measured on a 10,000-recipe subset
in the same process and extrapolated.

    python benchmarks/bench_pairs.py                 # full size (a few minutes on 2 cores)
    python benchmarks/bench_pairs.py --recipes 100000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import numpy as np
import pandas as pd

from clipfood_assets.data.pairs import build_positive_pairs, split_by_recipe
from clipfood_assets.data.trusted import parse_image_keys, parse_recipes

TARGET_SECONDS = 60.0
TARGET_RSS_GIB = 4.0
WORDS = (
    "banana french toast chicken noodle soup crispy apple pie chocolate chip cookies beef stew spicy "
    "thai curry lemon garlic shrimp pasta salad roasted vegetables pumpkin bread honey glazed salmon"
).split()


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def synthesize(n_recipes: int, n_images: int, seed: int = 0, sort_keys: bool = True) -> tuple[list[bytes], list[str]]:
    """recipes.jsonl lines (with extra fields) and image keys, ~0.1 % of them deliberately bad."""
    rng = np.random.default_rng(seed)
    ids = [f"{x:010x}" for x in rng.choice(16**10, size=n_recipes, replace=False)]
    words = rng.integers(0, len(WORDS), size=(n_recipes, 4))
    lines = [
        json.dumps(
            {"id": rid, "title_text_raw": " ".join(WORDS[w] for w in row[: 2 + i % 3]).title(), "source": "synthetic", "n": i}
        ).encode()
        for i, (rid, row) in enumerate(zip(ids, words))
    ]
    owners = np.sort(rng.integers(0, n_recipes, size=n_images))  # ~3 images per recipe, uneven
    positions = np.arange(n_images) - np.searchsorted(owners, owners)
    keys = [f"images/{WORDS[o % len(WORDS)]} dish__{ids[o]}_{p}.jpg" for o, p in zip(owners.tolist(), positions.tolist())]
    for i in range(0, n_images, 1000):  # salt: unsafe, wrong extension, unknown recipe
        keys[i] = ("images/../x{}__{}_0.jpg", "images/x{}__{}_0.gif", "images/x{}__{}ffff_0.jpg")[(i // 1000) % 3].format(i, ids[0])
    if sort_keys:
        keys.sort()  # S3/MinIO list objects in key order; parse_image_keys keeps that order
    else:
        keys = [keys[i] for i in rng.permutation(len(keys))]
    return lines, keys


def vectorized(lines: list[bytes], keys: list[str]) -> dict[str, float]:
    """The platform's path, stage by stage; returns seconds per stage and the pair count."""
    times: dict[str, float] = {}
    start = time.perf_counter()
    recipes, q_recipes = parse_recipes(lines)
    times["parse_recipes"] = time.perf_counter() - start
    t = time.perf_counter()
    images, q_keys = parse_image_keys(keys)
    times["parse_image_keys"] = time.perf_counter() - t
    t = time.perf_counter()
    pairs, q_pairs = build_positive_pairs(recipes, images)
    times["build_positive_pairs"] = time.perf_counter() - t
    t = time.perf_counter()
    train, test = split_by_recipe(pairs, test_size=0.2, seed=42)
    times["split_by_recipe"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - start
    times["pairs"] = len(pairs)
    times["quarantined"] = len(q_recipes) + len(q_keys) + len(q_pairs)
    times["test_recipes"] = test["recipe_id"].nunique()
    return times


def naive_pairs(recipes: pd.DataFrame, images: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The original notebooks' approach: filter the image table once per recipe."""
    pairs = []
    for recipe in recipes.itertuples(index=False):
        matching = images[images["recipe_id"] == recipe.recipe_id]
        pairs.extend((recipe.recipe_id, key, recipe.caption) for key in matching["image_key"])
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=None, help="default: 3 x recipes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-recipes", type=int, default=10_000)
    parser.add_argument("--shuffled-keys", action="store_true", help="keys not in listing order (slow path)")
    args = parser.parse_args()
    n_images = args.images or 3 * args.recipes

    t = time.perf_counter()
    lines, keys = synthesize(args.recipes, n_images, sort_keys=not args.shuffled_keys)
    print(f"synthetic manifest: {args.recipes:,} recipes, {n_images:,} image keys, "
          f"{'shuffled' if args.shuffled_keys else 'in listing order'} "
          f"(built in {time.perf_counter() - t:.1f} s, RSS peak so far {peak_rss_gib():.2f} GiB)")

    runs = []
    for repeat in range(args.repeats):
        runs.append(vectorized(lines, keys))
        print(f"  repeat {repeat + 1}: {runs[-1]['total']:.2f} s")
    print(f"\nvectorized pairs + split (median of {len(runs)}):")
    for stage in ("parse_recipes", "parse_image_keys", "build_positive_pairs", "split_by_recipe"):
        print(f"  {stage:<22} {statistics.median(r[stage] for r in runs):8.2f} s")
    total = statistics.median(r["total"] for r in runs)
    rss = peak_rss_gib()
    print(f"  {'TOTAL':<22} {total:8.2f} s   target < {TARGET_SECONDS:.0f} s   {'OK' if total < TARGET_SECONDS else 'MISSED'}")
    print(f"  {'peak RSS':<22} {rss:8.2f} GiB target < {TARGET_RSS_GIB:.0f} GiB {'OK' if rss < TARGET_RSS_GIB else 'MISSED'}")
    print(f"  pairs {runs[0]['pairs']:,}, quarantined {runs[0]['quarantined']:,}, test recipes {runs[0]['test_recipes']:,}")

    # Reference: per-recipe filtering on a subset, same process, same data shape.
    n_sub = min(args.naive_recipes, args.recipes)
    recipes, _ = parse_recipes(lines[:n_sub])
    sub_ids = set(recipes["recipe_id"])
    sub_keys = [k for k in keys if k.rsplit("__", 1)[-1].rsplit("_", 1)[0] in sub_ids]
    images, _ = parse_image_keys(sub_keys)
    t = time.perf_counter()
    naive = naive_pairs(recipes, images)
    naive_s = time.perf_counter() - t
    t = time.perf_counter()
    fast, _ = build_positive_pairs(recipes, images)
    fast_s = time.perf_counter() - t
    assert sorted(naive) == sorted(map(tuple, fast.to_numpy().tolist())), "naive and vectorized pairs differ"
    # At full size every filter scans all image rows: time a few filters on the full table.
    full_images, _ = parse_image_keys(keys)
    probe_ids = recipes["recipe_id"].head(20).tolist()
    t = time.perf_counter()
    for rid in probe_ids:
        full_images[full_images["recipe_id"] == rid]
    per_filter_full = (time.perf_counter() - t) / len(probe_ids)
    scale = args.recipes / n_sub
    print(f"\nreference: naive per-recipe loop ({n_sub:,} recipes, {len(images):,} images)")
    print(f"  naive loop on subset      {naive_s:8.2f} s   vectorized on same subset {fast_s:.3f} s   speed-up x{naive_s / max(fast_s, 1e-9):,.0f}")
    print(f"  naive, linear extrapolation to {args.recipes:,} recipes: {naive_s * scale:,.0f} s (lower bound)")
    print(f"  naive at full size: {per_filter_full * 1000:.1f} ms per filter x {args.recipes:,} recipes = "
          f"{per_filter_full * args.recipes:,.0f} s  (vs vectorized pairs+split {total:.1f} s, "
          f"x{per_filter_full * args.recipes / total:,.0f})")
    print(f"\npeak RSS at exit {peak_rss_gib():.2f} GiB (includes the reference tables); python {sys.version.split()[0]}, "
          f"pandas {pd.__version__}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
