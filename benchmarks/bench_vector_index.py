"""Benchmark: the exploitation zone's Chroma index next to plain numpy exact search, and its embedding path.

Part 1, the index (synthetic embeddings, clustered like real CLIP embeddings: ``--clusters`` centres
plus noise, L2-normalised, ``--dim`` wide):

- the lake: ``--n`` image embeddings written as safetensors shards (EmbeddingStore), items/s;
- the reference, plain numpy: every shard read back into one matrix (what exact search needs), items/s;
- Chroma: ExploitationIndex.rebuild loads them into exploitation_images and exploitation_multimodal
  (2 records per image) of an embedded PersistentClient and switches the pointer, records/s;
- queries: ``--queries`` stored vectors, top ``--k``, Chroma one query at a time (as `clipfood search`)
  vs numpy exact search, ms per query, and Chroma's recall@k against exact search.

Part 2, the embedding path (``--images`` synthetic 512 px JPEGs, the offline tiny CLIP, CPU): the
exploitation image embeddings (listing, ETag bookkeeping, shards, index) vs plain ``embed_images``
on the same images (the evaluation path), images/s; and the unchanged re-run.

    python benchmarks/bench_vector_index.py                 # 50,000 x 512, 256 images: ~1.5 min on 2 cores
    python benchmarks/bench_vector_index.py --n 200000      # more, if the machine has the time
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


def clustered_unit_vectors(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def image_rows(n: int) -> pd.DataFrame:
    keys = [f"images/image$bench$2026-01-01T00-00-00Z${i:032x}__r{i // 3:07d}_{i % 3}.jpg" for i in range(n)]
    return pd.DataFrame({
        "item_id": [k.replace("/", "__") for k in keys], "object_key": keys, "etag": [f"{i:016x}" for i in range(n)],
        "recipe_id": [f"r{i // 3:07d}" for i in range(n)], "title": "", "size_bytes": "50000",
        "width": "512", "height": "512",
    })


def bench_index(args, root: Path) -> None:
    from clipfood_assets.exploitation.embeddings import IMAGES, TITLES, Embedded, EmbeddingStore
    from clipfood_assets.exploitation.index import ExploitationIndex, IndexLocation
    from clipfood_assets.exploitation.models import ExploitationModel
    from clipfood_assets.exploitation.search import IndexSearcher, exact_top_k
    from clipfood_assets.lake import LocalLake

    vectors = clustered_unit_vectors(args.n, args.dim, args.clusters)
    rows = image_rows(args.n)
    lake = LocalLake(root / "lake")
    model = ExploitationModel("base", "bench", "mbench0000000")
    images = EmbeddingStore(lake, model.version, IMAGES)
    titles = EmbeddingStore(lake, model.version, TITLES)  # empty: the image load is what is measured

    start = time.perf_counter()
    images.update(rows, lambda todo: Embedded(todo, vectors))
    lake_s = time.perf_counter() - start
    titles.update(rows.iloc[:0], lambda todo: Embedded(todo, vectors[:0]))

    start = time.perf_counter()
    stored_rows, matrix = images.load()
    numpy_load_s = time.perf_counter() - start

    index = ExploitationIndex.open(IndexLocation(path=root / "chroma"))
    result = index.rebuild(model, images, titles)
    from clipfood_assets.exploitation.index import HNSW

    print(f"index: {args.n:,} embeddings x {args.dim} (float32, {args.clusters} clusters), embedded Chroma "
          f"{__import__('chromadb').__version__}, HNSW {HNSW}")
    print(f"  lake shards written        {args.n / lake_s:10,.0f} items/s   ({lake_s:.1f} s)")
    print(f"  numpy matrix from the lake {args.n / numpy_load_s:10,.0f} items/s   ({numpy_load_s:.1f} s)   <- reference")
    print(f"  Chroma load (2 collections){result.items_per_s:10,.0f} records/s ({result.seconds:.1f} s for "
          f"{2 * result.n_images:,} records = {result.n_images / result.seconds:,.0f} images/s)")

    rng = np.random.default_rng(1)
    picked = rng.choice(args.n, size=args.queries, replace=False)
    queries = matrix[picked]
    searcher = IndexSearcher(index, lake)
    chroma_times, numpy_times, recalls = [], [], []
    for query in queries:
        t0 = time.perf_counter()
        hits = searcher.query_images(query[None, :], args.k)[0]
        chroma_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        idx, scores = exact_top_k(matrix, query[None, :], args.k)
        numpy_times.append(time.perf_counter() - t0)
        exact = set(stored_rows["item_id"].iloc[idx[0]])
        recalls.append(len(exact & {h.item_id for h in hits}) / args.k)
    print(f"  query, top {args.k}, {args.queries} queries one at a time (median):")
    print(f"    Chroma HNSW              {1000 * statistics.median(chroma_times):8.2f} ms/query   "
          f"recall@{args.k} vs exact {np.mean(recalls):.4f} (min {np.min(recalls):.2f})")
    print(f"    numpy exact              {1000 * statistics.median(numpy_times):8.2f} ms/query   <- reference")


def bench_embedding_path(args, root: Path) -> None:
    import torch

    from clipfood_assets.exploitation.embeddings import (
        IMAGES,
        EmbeddingStore,
        embed_image_items,
        trusted_image_items,
    )
    from clipfood_assets.lake import LocalLake
    from clipfood_assets.lake.layout import TRUSTED_ZONE
    from clipfood_assets.modeling.base_model import build_base_model
    from clipfood_assets.modeling.clip import load_clip
    from clipfood_assets.modeling.embed import embed_images
    from clipfood_assets.synthetic import generate_recipes, render_dish_image

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    lake = LocalLake(root / "zone")
    recipes = generate_recipes(max(1, args.images // 3), seed=11)
    for i in range(args.images):
        recipe = recipes[i % len(recipes)]
        lake.put_bytes(TRUSTED_ZONE, f"images/bench__{recipe['id']}_{i}.jpg",
                       render_dish_image(recipe, 1 + i // len(recipes), seed=11))
    model, processor = load_clip(build_base_model(root / "tiny", pretrain_steps=0))
    keys = [o.key for o in lake.list(TRUSTED_ZONE, "images/")]
    load = lambda key: lake.get_bytes(TRUSTED_ZONE, key)  # noqa: E731
    embed_images(model, processor, keys[:32], load, batch_size=64, device="cpu")  # warm-up

    plain, ours = [], []
    for repeat in range(args.repeats):  # alternated, medians: other jobs on the cores hit both alike
        start = time.perf_counter()
        embed_images(model, processor, keys, load, batch_size=64, device="cpu")
        plain.append(time.perf_counter() - start)
        store = EmbeddingStore(lake, f"mbenchembed{repeat:02d}", IMAGES)
        items, quarantined = trusted_image_items(lake)
        start = time.perf_counter()
        first = store.update(items, lambda todo: embed_image_items(model, processor, lake, todo, batch_size=64,
                                                                   device="cpu"), quarantined)
        ours.append(time.perf_counter() - start)
    start = time.perf_counter()
    items, quarantined = trusted_image_items(lake)
    again = store.update(items, lambda todo: 1 / 0, quarantined)
    rerun_s = time.perf_counter() - start
    plain_s, ours_s = statistics.median(plain), statistics.median(ours)
    print(f"embedding path: {args.images} synthetic 512 px JPEGs, tiny CLIP (64 px), CPU "
          f"{torch.get_num_threads()} threads, image cache off, median of {args.repeats}")
    print(f"  exploitation image embeddings {first.n_embedded / ours_s:8.0f} img/s ({ours_s:.2f} s, listing and "
          "shards included)")
    print(f"  plain embed_images            {args.images / plain_s:8.0f} img/s ({plain_s:.2f} s)   <- reference")
    print(f"  ratio {plain_s / ours_s:.2f} of the evaluation path's speed; unchanged re-run {rerun_s:.2f} s "
          f"({again.n_embedded} embedded)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="image embeddings in the index")
    parser.add_argument("--dim", type=int, default=512, help="embedding width (ViT-B/32: 512)")
    parser.add_argument("--clusters", type=int, default=2_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--images", type=int, default=256, help="JPEGs for the embedding path (0: skip it)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of the embedding path")
    parser.add_argument("--tmp-dir", default=None, help="where the lake and the Chroma folder go (e.g. /dev/shm)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="bench_vector_index_") as tmp:
        os.environ["CLIPFOOD_HOME"] = tmp
        total = time.perf_counter()
        bench_index(args, Path(tmp))
        if args.images:
            bench_embedding_path(args, Path(tmp))
        print(f"total {time.perf_counter() - total:.0f} s")


if __name__ == "__main__":
    main()
