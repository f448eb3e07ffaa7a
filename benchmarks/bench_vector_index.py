"""Benchmark: the exploitation zone's Chroma index against plain Chroma and plain numpy, and its embedding path.

Part 1, the load, at each of ``--sizes`` (synthetic embeddings clustered like real CLIP embeddings:
``--clusters`` centres plus noise, L2-normalised, ``--dim`` wide, written once to the lake as safetensors
shards). Each load runs in a fresh process of its own (so its peak RSS is its own) into a fresh embedded
PersistentClient folder, the variants alternated ``--load-repeats`` times, medians:

- ours: ExploitationIndex.rebuild: exploitation_images and exploitation_multimodal (2 records per image),
  pointer switched, everything it does timed (shards read from the lake, records built, counts checked);
- plain: a plain ``chromadb`` client adding the same records (ids, embeddings, the same metadatas) to two
  collections with the same HNSW settings, in ``client.get_max_batch_size()`` batches, only its adds timed
  (records prepared beforehand): Chroma's own rate for the same work, the reference;
- bare (``--bare``): the same, ids and embeddings only: what Chroma's metadata costs;
- reader: a fresh process opening our folder and querying both collections once (Chroma loads each HNSW
  graph whole into memory): seconds to the first answer and RSS.

It prints records/s, ours/plain, peak RSS, the folder's size, and fits the figures against the number of
records (load seconds ~ a x R^b; reader RSS ~ c + d x R; folder ~ e x R) to extrapolate to Recipe1M+
(``--target-images`` photos and ``--target-titles`` titles: R = 2 x photos + titles).

Part 2, queries at the largest size (ours' folder): ``--queries`` stored vectors, top ``--k``, Chroma one
query at a time (as `clipfood search`) vs numpy exact search, ms per query, and Chroma's recall@k.

Part 3, the embedding path (``--images`` synthetic 512 px JPEGs, the offline tiny CLIP, CPU): the
exploitation image embeddings (listing, ETag bookkeeping, shards, index) vs plain ``embed_images``
on the same images (the evaluation path), images/s; and the unchanged re-run.

    python benchmarks/bench_vector_index.py                          # 10,000 and 50,000 x 512: ~10 min on 2 cores
    python benchmarks/bench_vector_index.py --sizes 200000 --load-repeats 1 --images 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

MODEL = ("base", "bench", "mbench0000000")  # ExploitationModel(kind, name, version) of the stored embeddings


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


def _stores(lake_dir: Path):
    from clipfood_assets.exploitation.embeddings import IMAGES, TITLES, EmbeddingStore
    from clipfood_assets.exploitation.models import ExploitationModel
    from clipfood_assets.lake import LocalLake

    lake = LocalLake(lake_dir)
    model = ExploitationModel(*MODEL)
    return lake, model, EmbeddingStore(lake, model.version, IMAGES), EmbeddingStore(lake, model.version, TITLES)


def write_lake(lake_dir: Path, n: int, dim: int, clusters: int) -> float:
    """The stores of ``n`` image embeddings (no titles: the image load is what is measured); seconds taken."""
    from clipfood_assets.exploitation.embeddings import Embedded

    _, _, images, titles = _stores(lake_dir)
    vectors, rows = clustered_unit_vectors(n, dim, clusters), image_rows(n)
    start = time.perf_counter()
    images.update(rows, lambda todo: Embedded(todo, vectors))
    seconds = time.perf_counter() - start
    titles.update(rows.iloc[:0], lambda todo: Embedded(todo, vectors[:0]))
    return seconds


def _rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process, MiB."""
    with open("/proc/self/status") as status:
        current = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return current / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(variant: str, lake_dir: Path, chroma_dir: Path) -> dict:
    """One measurement in this (fresh) process; what it measured."""
    from clipfood_assets.exploitation.index import HNSW, ExploitationIndex, IndexLocation, _records

    lake, model, images, titles = _stores(lake_dir)
    if variant == "ours":
        index = ExploitationIndex.open(IndexLocation(path=chroma_dir))
        before, _ = _rss_mib()
        result = index.rebuild(model, images, titles)
        return {"seconds": result.seconds, "records": 2 * result.n_images, "rss_before": before,
                "peak_rss": _rss_mib()[1], "batch": index.batch}
    if variant == "reader":
        start = time.perf_counter()
        index = ExploitationIndex.open(IndexLocation(path=chroma_dir), create=False)
        images_col, multimodal_col, _ = index.live()
        probe = images_col.get(limit=1, include=["embeddings"])["embeddings"]
        for collection in (images_col, multimodal_col):
            collection.query(query_embeddings=probe, n_results=10)
        rss, peak = _rss_mib()
        return {"seconds": time.perf_counter() - start, "rss": rss, "peak_rss": peak}
    import chromadb
    from chromadb.config import Settings

    rows, vectors = images.load()
    ids, metadatas, _ = _records(rows, "images")
    client = chromadb.PersistentClient(path=str(chroma_dir), settings=Settings(anonymized_telemetry=False))
    batch = client.get_max_batch_size()
    hnsw = {k: v for k, v in HNSW.items()}
    before, _ = _rss_mib()
    start = time.perf_counter()
    for name in ("plain_images", "plain_multimodal"):
        collection = client.create_collection(name, configuration={"hnsw": hnsw}, embedding_function=None)
        for at in range(0, len(ids), batch):
            collection.add(ids=ids[at:at + batch], embeddings=vectors[at:at + batch],
                           **({"metadatas": metadatas[at:at + batch]} if variant == "plain" else {}))
    return {"seconds": time.perf_counter() - start, "records": 2 * len(ids), "rss_before": before,
            "peak_rss": _rss_mib()[1], "batch": batch}


def _measure(variant: str, lake_dir: Path, chroma_dir: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--lake", str(lake_dir), "--chroma",
                          str(chroma_dir)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _fit_power(records: list[float], seconds: list[float]) -> tuple[float, float]:
    """(a, b) of seconds = a x records^b, least squares in log space (b = 1: linear)."""
    if len(records) < 2:
        return seconds[0] / records[0], 1.0
    b, log_a = np.polyfit(np.log(records), np.log(seconds), 1)
    return float(np.exp(log_a)), float(b)


def _fit_line(records: list[float], values: list[float]) -> tuple[float, float]:
    """(c, d) of value = c + d x records, least squares (through the one point and 0 with one size)."""
    if len(records) < 2:
        return 0.0, values[0] / records[0]
    d, c = np.polyfit(records, values, 1)
    return float(c), float(d)


def bench_load(args, root: Path) -> tuple[Path, Path]:
    """Part 1; (lake folder, our Chroma folder) of the largest size, for the queries."""
    from clipfood_assets.exploitation.index import HNSW

    variants = ["ours", "plain"] + (["bare"] if args.bare else [])
    print(f"load: embeddings x {args.dim} (float32, {args.clusters} clusters), embedded Chroma "
          f"{__import__('chromadb').__version__}, HNSW {HNSW}, each load a fresh process, median of "
          f"{args.load_repeats}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"  {'images':>9} {'records':>9} | {'ours rec/s':>10} {'plain rec/s':>11} {'ratio':>6}"
          + (f" {'bare rec/s':>10}" if args.bare else "") + f" | {'ours s':>7} {'peak RSS':>9} {'folder':>9} |"
          f" {'reader s':>8} {'reader RSS':>10}")
    table = []
    for n in args.sizes:
        lake_dir = root / f"lake-{n}"
        write_lake(lake_dir, n, args.dim, args.clusters)
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        keep = None
        for repeat in range(args.load_repeats):
            for variant in variants:
                chroma_dir = root / f"chroma-{n}-{variant}-{repeat}"
                runs[variant].append(_measure(variant, lake_dir, chroma_dir))
                if variant == "ours" and keep is None:
                    keep = chroma_dir
                    runs[variant][-1]["folder"] = _folder_mib(chroma_dir)
                else:
                    shutil.rmtree(chroma_dir)
        reader = _measure("reader", lake_dir, keep)
        rate = {v: statistics.median(r["records"] / r["seconds"] for r in runs[v]) for v in variants}
        row = {"images": n, "records": runs["ours"][0]["records"], "rate": rate,
               "ours_s": statistics.median(r["seconds"] for r in runs["ours"]),
               "peak_rss": max(r["peak_rss"] for r in runs["ours"]), "folder": runs["ours"][0]["folder"],
               "reader_s": reader["seconds"], "reader_rss": reader["rss"]}
        table.append(row)
        print(f"  {n:9,} {row['records']:9,} | {rate['ours']:10,.0f} {rate['plain']:11,.0f} "
              f"{rate['ours'] / rate['plain']:6.2f}" + (f" {rate['bare']:10,.0f}" if args.bare else "")
              + f" | {row['ours_s']:7.1f} {row['peak_rss']:7,.0f} M {row['folder']:7,.0f} M |"
              f" {row['reader_s']:8.2f} {row['reader_rss']:8,.0f} M", flush=True)
        if n != args.sizes[-1]:
            shutil.rmtree(keep)
            shutil.rmtree(lake_dir)
    print(f"  batches: ours {runs['ours'][0]['batch']:,}, plain {runs['plain'][0]['batch']:,} records per add "
          f"(Chroma's get_max_batch_size); load average now {os.getloadavg()[0]:.2f}")
    extrapolate(args, table)
    return lake_dir, keep


def extrapolate(args, table: list[dict]) -> None:
    records = [float(r["records"]) for r in table]
    a, b = _fit_power(records, [r["ours_s"] for r in table])
    c, d = _fit_line(records, [r["reader_rss"] for r in table])
    _, e = _fit_line(records, [r["folder"] for r in table])
    target = 2 * args.target_images + args.target_titles
    hours = a * target ** b / 3600
    print(f"  extrapolation to {args.target_images:,} photos + {args.target_titles:,} titles = {target:,} records:")
    print(f"    load seconds ~ {a:.3g} x R^{b:.3f} (fitted on {len(table)} sizes; growth per 10x "
          f"{10 ** b / 10:.2f} of linear): {hours:,.1f} h")
    print(f"    reader RSS ~ {c:,.0f} MiB + {d * 1024:,.2f} KiB x R: {(c + d * target) / 1024:,.1f} GiB; "
          f"folder ~ {e * 1024:,.2f} KiB x R: {e * target / 1024:,.1f} GiB "
          f"(float32 vectors alone: {target * args.dim * 4 / 2**30:,.1f} GiB)")


def bench_queries(args, lake_dir: Path, chroma_dir: Path) -> None:
    from clipfood_assets.exploitation.index import ExploitationIndex, IndexLocation
    from clipfood_assets.exploitation.search import IndexSearcher, exact_top_k

    lake, _, images, _ = _stores(lake_dir)
    stored_rows, matrix = images.load()
    index = ExploitationIndex.open(IndexLocation(path=chroma_dir), create=False)
    rng = np.random.default_rng(1)
    picked = rng.choice(len(matrix), size=min(args.queries, len(matrix)), replace=False)
    searcher = IndexSearcher(index, lake)
    chroma_times, numpy_times, recalls = [], [], []
    for query in matrix[picked]:
        t0 = time.perf_counter()
        hits = searcher.query_images(query[None, :], args.k)[0]
        chroma_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        idx, _ = exact_top_k(matrix, query[None, :], args.k)
        numpy_times.append(time.perf_counter() - t0)
        exact = set(stored_rows["item_id"].iloc[idx[0]])
        recalls.append(len(exact & {h.item_id for h in hits}) / args.k)
    print(f"queries: top {args.k} over {len(matrix):,} images, {len(picked)} queries one at a time (median):")
    print(f"  Chroma HNSW              {1000 * statistics.median(chroma_times):8.2f} ms/query   "
          f"recall@{args.k} vs exact {np.mean(recalls):.4f} (min {np.min(recalls):.2f})")
    print(f"  numpy exact              {1000 * statistics.median(numpy_times):8.2f} ms/query   <- reference")


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
    parser.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[10_000, 50_000],
                        help="image embeddings per load, comma-separated")
    parser.add_argument("--dim", type=int, default=512, help="embedding width (ViT-B/32: 512)")
    parser.add_argument("--clusters", type=int, default=2_000)
    parser.add_argument("--load-repeats", type=int, default=3, help="alternated loads per variant and size")
    parser.add_argument("--bare", action="store_true", help="also load ids and embeddings only (no metadata)")
    parser.add_argument("--target-images", type=int, default=13_000_000, help="photos to extrapolate to")
    parser.add_argument("--target-titles", type=int, default=1_000_000, help="titles to extrapolate to")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--images", type=int, default=256, help="JPEGs for the embedding path (0: skip it)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of the embedding path")
    parser.add_argument("--tmp-dir", default=None, help="where the lakes and the Chroma folders go (e.g. /dev/shm)")
    parser.add_argument("--child", choices=["ours", "plain", "bare", "reader"], help=argparse.SUPPRESS)
    parser.add_argument("--lake", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--chroma", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.lake, args.chroma)))
        return
    with tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="bench_vector_index_") as tmp:
        os.environ["CLIPFOOD_HOME"] = tmp
        total = time.perf_counter()
        lake_dir, chroma_dir = bench_load(args, Path(tmp))
        bench_queries(args, lake_dir, chroma_dir)
        if args.images:
            bench_embedding_path(args, Path(tmp))
        print(f"total {time.perf_counter() - total:.0f} s")


if __name__ == "__main__":
    main()
