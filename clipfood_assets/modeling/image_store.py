"""The packed image store: every fine-tuning image preprocessed once, as uint8 shards in the lake.

Decoding a 512 px JPEG costs milliseconds per image per core; reading a ready uint8 row of a
memory-mapped array costs microseconds. The store decodes each image once per preprocessing
signature and training/evaluation read the pixels back through :class:`PackedImageStore`, an
:class:`~clipfood_assets.modeling.images.ImageSource`.

Layout (one folder per preprocessing signature; ``<digest>`` = :func:`signature_digest`)::

    <bucket>/preprocessed_images/<digest>/shard-00000.npy    uint8 [rows, 3, H, W] (numpy .npy, no pickle)
    <bucket>/preprocessed_images/<digest>/index.csv          image_key, shard, shard_row, source_etag,
                                                              source_size, decoder   (one row per image)
    <bucket>/preprocessed_images/<digest>/failures.csv       image_key, source_etag, source_size, reason, detail
    <bucket>/preprocessed_images/<digest>/signature.json     the preprocessing signature (what the digest names)
    <bucket>/preprocessed_images/<digest>/_preprocessed_images.manifest.json
        written last (the commit point, :mod:`clipfood_assets.lake.artifacts`' format): every live file with its
        size and ETag; ``metadata.shards`` gives each shard's rows and sha256.

Shards are immutable: an update writes new shards (new numbers) first, then index.csv, failures.csv and
the manifest, and only then deletes shards nothing references any more, so a reader never sees an index
naming a missing shard.

**Pixels and tolerance.** The reference is ``ImagePreprocessor(processor).to_uint8`` (a full PIL
decode, resize of the shortest edge, centre crop). A store is built by faster paths whose pixels differ
from the reference by a few levels: DCT-scaled JPEG decoding (PIL ``draft``) on CPU, nvjpeg decoding and a
torch resize on CUDA. All of them are held to one :data:`TOLERANCE` against the reference (tests measure
it), so they share one signature: a store built on a GPU machine is read on a CPU one and vice versa
(given the same Pillow, which the signature names). The ``decoder`` column records which path made each
row. A path that could exceed the tolerance must not write into a store of this signature. Measured on
an H200 machine (1,536 synthetic 512 px JPEGs): nvjpeg + torch resize against the reference, per image,
mean |diff| <= 0.57 and max <= 21 levels at 224 px (<= 0.15 / 5 at 64 px).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from clipfood_assets.data.decode import open_checked
from clipfood_assets.data.parallel import bounded_map
from clipfood_assets.lake.artifacts import (
    IncompleteArtifact,
    manifest_key,
    write_manifest,
)
from clipfood_assets.lake.base import Lake, ObjectInfo, ObjectNotFound
from clipfood_assets.lake.local import LocalLake
from clipfood_assets.lake.layout import (
    AUGMENTED_IMAGES_PREFIX,
    FINE_TUNING_ZONE,
    IMAGES_PREFIX,
    PREPROCESSED_IMAGES_PREFIX,
    preprocessed_images_prefix,
)
from clipfood_assets.lake.tables import read_table, write_table
from clipfood_assets.modeling.embed import ImagePreprocessor
from clipfood_assets.modeling.image_decode import (
    VANISHED,
    ResizeCrop,
    decode_chunk,
    decode_one,
    resize_crop_of,
    resized_size,
)
from clipfood_assets.settings import ClipfoodSettings

log = logging.getLogger(__name__)

ARTIFACT = "preprocessed_images"
STORE_FORMAT = "clipfood-packed-uint8-chw/1"
INDEX_NAME = "index.csv"
FAILURES_NAME = "failures.csv"
SIGNATURE_NAME = "signature.json"
INDEX_COLUMNS = ["image_key", "shard", "shard_row", "source_etag", "source_size", "decoder"]
FAILURE_COLUMNS = ["image_key", "source_etag", "source_size", "reason", "detail"]
# The fine-tuning zone's images: the copied trusted-zone photos and the rendered augmentations.
SOURCE_PREFIXES = (IMAGES_PREFIX, AUGMENTED_IMAGES_PREFIX)
DEFAULT_SHARD_BYTES = 1 << 30  # ~1 GiB shards: few objects, each a cheap sequential download

# Every decoder path's pixels against the reference decode, per image, in uint8 levels:
# mean |difference| over the image and the largest single-pixel |difference|. Measured on the
# synthetic 512 px JPEGs (q 90): draft decoding mean <= 1.5 / max 28 (64 px and 224 px targets); torch
# bicubic-antialias resize of the same full decode mean <= 0.16 / max 5. Draft edges move single pixels
# a lot while the mean stays small, hence the wide max bound.
TOLERANCE = {"mean_abs": 2.0, "max_abs": 48}
# The torch resize alone (same decoded RGB as the reference): it is this close to PIL's.
RESIZE_TOLERANCE = {"mean_abs": 0.5, "max_abs": 8}

CPU_DECODER = "cpu"
CUDA_DECODER = "cuda"
# executor="auto" decodes in threads. Measured (benchmarks/bench_image_store.py, 512 px JPEGs): on 2 cores
# threads build 2x faster than 2 spawned processes (1,899 vs 901 img/s at 64 px); on 16 cores with 8 workers
# they tie at 224 px (847 vs 838 img/s) and threads lead at 64 px (1,501 vs 1,013): Pillow releases the GIL
# while decoding and resizing, and processes pay their start and the pickling of every decoded array back.
# Processes stay available (executor="processes") for decoders that hold the GIL.
AUTO_EXECUTOR = "threads"
DECODE_CHUNK = 32  # images per task sent to a worker process


_SHARD_NAME = re.compile(r"^shard-(\d{5,9})\.npy$")
_PIL_BICUBIC, _PIL_BILINEAR = 3, 2


class ImageStoreError(IncompleteArtifact):
    """The store is missing, incomplete or inconsistent (the message names the object and the fix)."""


class StoreNotFound(ImageStoreError):
    """No committed store (no manifest) for this preprocessing signature."""


# --------------------------------------------------------------------------------------- signature


def store_signature(processor) -> dict:
    """What decides a store's pixels: the reference preprocessing's signature (resize, crop, resample,
    decoder version, Pillow version), the store format and the tolerance every decoder path meets.

    ValueError when the processor is not CLIP's shortest-edge + centre-crop recipe."""
    reference = ImagePreprocessor(processor)
    resize_crop_of(reference)
    return {"store": STORE_FORMAT, "reference": reference.signature(), "tolerance": dict(TOLERANCE)}


def signature_digest(signature: dict) -> str:
    """24 hex digits of sha256 over the canonical JSON of ``signature``: the store's folder name."""
    text = json.dumps(signature, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def store_prefix(processor) -> str:
    """``preprocessed_images/<digest>/`` of ``processor``'s store."""
    return preprocessed_images_prefix(signature_digest(store_signature(processor)))


# --------------------------------------------------------------------------------------- stored state


def _empty_index() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c in ("shard_row", "source_size") else object)
                         for c in INDEX_COLUMNS})


def _empty_failures() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "source_size" else object) for c in FAILURE_COLUMNS})


@dataclass
class _State:
    manifest: dict
    index: pd.DataFrame
    failures: pd.DataFrame
    shards: dict[str, dict]  # name -> {"rows", "size", "etag", "sha256"}


def _check_shard_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not _SHARD_NAME.match(name):
        raise ImageStoreError(f"{where} names an invalid shard {name!r} (expected shard-NNNNN.npy)")
    return name


def _read_state(lake: Lake, bucket: str, prefix: str, *, strict: bool) -> _State | None:
    """The committed store under ``prefix``, or None when there is no manifest.

    ``strict`` (readers): every shard must exist with its recorded size, else ImageStoreError.
    Not strict (the builder): rows of a missing or resized shard are dropped, to be decoded again.
    """
    uri = lake.uri(bucket, prefix)
    try:
        manifest = json.loads(lake.get_bytes(bucket, manifest_key(prefix, ARTIFACT)))
    except ObjectNotFound:
        return None
    except ValueError as exc:
        raise ImageStoreError(f"image store {uri}: unreadable manifest ({exc})") from None
    meta = manifest.get("metadata") or {}
    if meta.get("format") != STORE_FORMAT:
        raise ImageStoreError(f"image store {uri}: format {meta.get('format')!r}, this code reads {STORE_FORMAT!r}")
    files = {f["name"]: f for f in manifest.get("files", [])}
    shards: dict[str, dict] = {}
    for name, info in (meta.get("shards") or {}).items():
        _check_shard_name(name, f"the manifest of {uri}")
        if name not in files:
            raise ImageStoreError(f"image store {uri}: shard {name} has metadata but is not a manifest file")
        shards[name] = {"rows": int(info["rows"]), "sha256": str(info["sha256"]),
                        "size": int(files[name]["size"]), "etag": str(files[name]["etag"])}
    try:
        index = read_table(lake.get_bytes(bucket, prefix + INDEX_NAME))
        failures = (read_table(lake.get_bytes(bucket, prefix + FAILURES_NAME))
                    if FAILURES_NAME in files else _empty_failures())
    except ObjectNotFound as exc:
        raise ImageStoreError(f"image store {uri}: {exc} (the manifest lists it)") from None
    if list(index.columns) != INDEX_COLUMNS:
        raise ImageStoreError(f"image store {uri}: index columns {list(index.columns)}, expected {INDEX_COLUMNS}")
    for name in index["shard"].unique():
        _check_shard_name(name, f"index of {uri}")
        if name not in shards:
            raise ImageStoreError(
                f"image store {uri}: the index names shard {name} which the manifest does not list; "
                "rebuild the preprocessed_images asset")
    if index["image_key"].duplicated().any():
        dup = index.loc[index["image_key"].duplicated(), "image_key"].iloc[0]
        raise ImageStoreError(f"image store {uri}: image {dup!r} appears twice in the index")
    rows = index.groupby("shard")["shard_row"].max()
    for name, top in rows.items():
        if top >= shards[name]["rows"] or (index["shard_row"] < 0).any():
            raise ImageStoreError(f"image store {uri}: index rows out of range for shard {name}")
    bad = []
    for name, info in shards.items():
        try:
            size = lake.stat(bucket, prefix + name).size
        except ObjectNotFound:
            size = None
        if size != info["size"]:
            bad.append((name, size, info["size"]))
    if bad and strict:
        name, size, want = bad[0]
        what = "is missing" if size is None else f"has {size} bytes, the manifest says {want}"
        raise ImageStoreError(f"image store {uri}: shard {name} named by the index {what}; "
                              "rebuild the preprocessed_images asset")
    for name, size, want in bad:
        log.warning("image store %s: shard %s is %s; its rows will be decoded again", uri, name,
                    "missing" if size is None else f"{size} bytes, not {want}")
        shards.pop(name)
    if bad:
        index = index[index["shard"].isin(shards)].reset_index(drop=True)
    return _State(manifest, index, failures, shards)


# --------------------------------------------------------------------------------------- build result


@dataclass(frozen=True)
class DecodeFailure:
    """An image that could not be decoded: reason is one of image_decode's EMPTY, NOT_AN_IMAGE,
    TOO_LARGE, CORRUPT, VANISHED; detail is the error's message."""

    key: str
    reason: str
    detail: str
    etag: str = ""
    size: int = 0


@dataclass
class BuildResult:
    """What one build/update did. Counts are images; bytes are shard bytes in the lake."""

    uri: str
    prefix: str
    digest: str
    signature: dict
    images: int  # images in the store after the build
    new: int  # keys not in the store before, decoded
    changed: int  # keys whose source (ETag, size) changed, decoded again
    reused: int  # rows kept as they were (includes moved rows)
    removed: int  # keys that left the source prefixes, dropped from the index
    moved: int  # reused rows rewritten by compaction
    decoded: int  # decode attempts in this build (new + changed; known failures are not retried)
    failures: list[DecodeFailure]
    shards: int
    shards_written: list[str]
    shards_deleted: list[str]
    bytes: int  # all live shards
    bytes_written: int  # shards uploaded by this build
    decode_seconds: float
    decoder: str  # "cpu-processes", "cpu-threads", "cuda" or "none"
    decoded_by: dict[str, int] = field(default_factory=dict)  # decoder -> images decoded by it

    @property
    def decode_images_per_s(self) -> float:
        return self.decoded / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def failures_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(f.reason for f in self.failures).items()))


# --------------------------------------------------------------------------------------- torch resize


def resize_crop_uint8(images: Sequence[torch.Tensor], spec: ResizeCrop, *, batch: int = 64) -> torch.Tensor:
    """uint8 ``[n, 3, crop_height, crop_width]`` from uint8 images ``[3, h, w]`` (any sizes, any device).

    Shortest edge to ``spec.shortest_edge`` with the processor's rounding, bicubic (or bilinear)
    with antialias (PIL's filter on downscaling), rounded to uint8, then the centre crop (black
    padding where the image is smaller), all on the images' device. Against PIL's resize of the
    same pixels: within :data:`RESIZE_TOLERANCE`. ValueError for other resampling filters.
    """
    modes = {_PIL_BICUBIC: "bicubic", _PIL_BILINEAR: "bilinear"}
    if spec.resample not in modes:
        raise ValueError(f"torch resize supports bicubic and bilinear resampling, not PIL filter {spec.resample}")
    if not images:
        return torch.zeros((0, *spec.shape), dtype=torch.uint8)
    device = images[0].device
    out = torch.zeros((len(images), *spec.shape), dtype=torch.uint8, device=device)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image {i}: expected uint8 [3, h, w], got {image.dtype} {tuple(image.shape)}")
        by_size.setdefault((int(image.shape[1]), int(image.shape[2])), []).append(i)
    for (height, width), members in by_size.items():
        new_w, new_h = resized_size(width, height, spec.shortest_edge)
        for first in range(0, len(members), batch):
            part = members[first:first + batch]
            pixels = torch.stack([images[i] for i in part]).to(torch.float32)
            if (new_h, new_w) != (height, width):
                pixels = torch.nn.functional.interpolate(
                    pixels, size=(new_h, new_w), mode=modes[spec.resample], antialias=True, align_corners=False)
            pixels = pixels.round_().clamp_(0, 255).to(torch.uint8)
            (src_t, dst_t, n_h), (src_l, dst_l, n_w) = (
                _crop_window(new_h, spec.crop_height), _crop_window(new_w, spec.crop_width))
            out[part, :, dst_t:dst_t + n_h, dst_l:dst_l + n_w] = pixels[:, :, src_t:src_t + n_h, src_l:src_l + n_w]
    return out


def _crop_window(size: int, crop: int) -> tuple[int, int, int]:
    """(source offset, destination offset, length) of a centre crop, padding when ``size < crop``."""
    if size >= crop:
        return (size - crop) // 2, 0, crop
    return 0, (crop - size) // 2, size


def cuda_jpeg_available() -> bool:
    """torchvision's nvjpeg decoder and a CUDA device are both there."""
    if not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken torchvision: the CPU path decodes
        return False
    return True


def _nvjpeg_eligible(data: bytes) -> bool:
    """A plain JPEG (RGB or gray, upright, within the pixel limit) that nvjpeg decodes like PIL.
    Anything else (PNG, CMYK, EXIF-rotated, bad bytes) goes to the CPU decoder, which records failures."""
    try:
        with open_checked(data) as image:
            return (image.format == "JPEG" and image.mode in ("RGB", "L")
                    and image.getexif().get(0x0112, 1) in (1, None))
    except Exception:  # noqa: BLE001
        return False


def decode_batch_cuda(items: list[tuple[str, bytes]], spec: ResizeCrop, device: torch.device) -> list[tuple]:
    """Decode JPEGs with nvjpeg on ``device``, resize and crop there, back to CPU uint8 numpy.

    Images nvjpeg cannot take (or fails on) are decoded by the CPU path instead. One result per item,
    in order: ``(key, pixels or None, reason, detail, decoder)`` (decoder ``cuda`` or ``cpu``; reason and
    detail as :func:`~clipfood_assets.modeling.image_decode.decode_one` when it failed).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    results: dict[int, tuple] = {}
    gpu = [i for i, (_, data) in enumerate(items) if data and _nvjpeg_eligible(data)]
    decoded: dict[int, torch.Tensor] = {}
    if gpu:
        tensors = [torch.frombuffer(bytearray(items[i][1]), dtype=torch.uint8) for i in gpu]
        try:
            images = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
            decoded = dict(zip(gpu, images))
        except Exception:  # noqa: BLE001 - one bad image fails the batch: decode one by one
            for i, tensor in zip(gpu, tensors):
                try:
                    decoded[i] = decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device)
                except Exception:  # noqa: BLE001 - the CPU path decodes it (or records why not)
                    pass
    if decoded:
        order = sorted(decoded)
        pixels = resize_crop_uint8([decoded[i] for i in order], spec).cpu().numpy()
        for row, i in enumerate(order):
            results[i] = (items[i][0], pixels[row], "", "", CUDA_DECODER)
    for i, (key, data) in enumerate(items):
        if i not in results:
            key, array, reason, detail = decode_one(key, data, spec)
            results[i] = (key, array, reason, detail, CPU_DECODER if array is not None else "")
    return [results[i] for i in range(len(items))]


# --------------------------------------------------------------------------------------- building


class _ShardWriter:
    """Appends rows into ~``shard_bytes`` shards, uploads each when full (shards first, index last)."""

    def __init__(self, lake: Lake, bucket: str, prefix: str, shape: tuple[int, int, int], shard_bytes: int,
                 first_number: int, tmp: Path) -> None:
        self.lake, self.bucket, self.prefix, self.shape, self.tmp = lake, bucket, prefix, shape, tmp
        self.rows_per_shard = max(1, int(shard_bytes) // int(np.prod(shape)))
        self.number = first_number
        self.buffer: np.ndarray | None = None
        self.filled = 0
        self.pending: list[dict] = []
        self.index_rows: list[dict] = []
        self.written: dict[str, dict] = {}

    def add(self, key: str, pixels: np.ndarray, etag: str, size: int, decoder: str) -> None:
        if pixels.shape != self.shape or pixels.dtype != np.uint8:
            raise ValueError(f"image {key!r}: decoded to {pixels.dtype} {pixels.shape}, the store holds uint8 {self.shape}")
        if self.buffer is None:
            self.buffer = np.empty((self.rows_per_shard, *self.shape), dtype=np.uint8)
        self.buffer[self.filled] = pixels
        self.pending.append({"image_key": key, "shard_row": self.filled, "source_etag": etag,
                             "source_size": int(size), "decoder": decoder})
        self.filled += 1
        if self.filled == self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.filled:
            return
        name = f"shard-{self.number:05d}.npy"
        path = self.tmp / name
        np.save(path, self.buffer[:self.filled], allow_pickle=False)
        digest = _sha256_file(path)
        info = self.lake.put_file(self.bucket, self.prefix + name, path, "application/octet-stream")
        size = path.stat().st_size
        path.unlink()
        self.written[name] = {"rows": self.filled, "sha256": digest, "size": size, "etag": info.etag}
        self.index_rows += [{**row, "shard": name} for row in self.pending]
        self.pending, self.filled = [], 0
        self.number += 1


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _list_sources(lake: Lake, bucket: str, prefixes: Sequence[str]) -> dict[str, ObjectInfo]:
    sources: dict[str, ObjectInfo] = {}
    for prefix in prefixes:
        for obj in lake.list(bucket, prefix):
            if obj.key.endswith("/") or obj.key.startswith(PREPROCESSED_IMAGES_PREFIX):
                continue  # folder markers; never the store's own files
            sources[obj.key] = obj
    return dict(sorted(sources.items()))


def _decode_stream(
    keys: list[str], fetch: Callable[[str], bytes | None], spec: ResizeCrop, *, device: torch.device,
    workers: int, executor: str, io_workers: int,
) -> tuple[str, Iterator[tuple[str, np.ndarray | None, str, str, str]]]:
    """(decoder name, iterator of (key, pixels or None, reason, detail, decoder) in ``keys`` order)."""

    def fetched() -> Iterator[tuple[str, bytes | None]]:
        yield from zip(keys, bounded_map(fetch, keys, io_workers))

    def chunks(size: int) -> Iterator[list[tuple[str, bytes | None]]]:
        chunk = []
        for item in fetched():
            chunk.append(item)
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def vanished(key: str):
        return key, None, VANISHED, "listed, but gone when read", ""

    if device.type == "cuda" and spec.resample in (_PIL_BICUBIC, _PIL_BILINEAR) and cuda_jpeg_available():
        def on_cuda():
            for chunk in chunks(256):
                present = [(k, d) for k, d in chunk if d is not None]
                done = {result[0]: result for result in decode_batch_cuda(present, spec, device)}
                for key, data in chunk:
                    yield vanished(key) if data is None else done[key]
        return CUDA_DECODER, on_cuda()

    if executor not in ("auto", "processes", "threads"):
        raise ValueError(f"executor must be auto, processes or threads, got {executor!r}")
    if executor == "auto":
        executor = AUTO_EXECUTOR

    def on_cpu():
        if executor == "processes":
            # spawn: safe with threads (the fetcher) and CUDA in the parent; workers import only PIL/numpy.
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        else:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-store-decode")
        try:
            pending: list[tuple[list, Future]] = []
            for chunk in chunks(DECODE_CHUNK):
                present = [(k, d) for k, d in chunk if d is not None]
                pending.append((chunk, pool.submit(decode_chunk, spec, present)))
                while len(pending) > 2 * workers:
                    yield from _merge(*pending.pop(0), vanished)
            while pending:
                yield from _merge(*pending.pop(0), vanished)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    return f"{CPU_DECODER}-{executor}", on_cpu()


def _merge(chunk, future: Future, vanished):
    done = {key: rest for key, *rest in future.result()}
    for key, data in chunk:
        if data is None:
            yield vanished(key)
        else:
            array, reason, detail = done[key]
            yield key, array, reason, detail, CPU_DECODER if array is not None else ""


def update_image_store(
    lake: Lake,
    processor,
    *,
    bucket: str = FINE_TUNING_ZONE,
    source_prefixes: Sequence[str] = SOURCE_PREFIXES,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    device: torch.device | str = "cpu",
    workers: int | None = None,
    executor: str = "auto",
    io_workers: int = 8,
    rebuild: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> BuildResult:
    """Bring the store of ``processor``'s preprocessing up to date with every image under
    ``source_prefixes`` of ``bucket``; returns what it did.

    Incremental: an image whose source (ETag, size) is unchanged keeps its row; only new and changed
    images are read and decoded, into new shards of about ``shard_bytes`` bytes; images gone from the
    source leave the index. Shards that keep most of their rows are never rewritten or uploaded again.
    **Compaction:** a shard with fewer live rows than half its rows has its live rows copied into the new
    shards and is deleted (a shard with none is simply deleted); so dead rows never exceed half of any
    kept shard and an update rewrites at most what it makes obsolete plus that half.
    ``rebuild`` decodes everything again into fresh shards.

    An image that cannot be decoded (empty, not an image, too large, corrupt, vanished) is recorded in
    ``BuildResult.failures`` and in failures.csv, never fatal for the others; while its source is
    unchanged it is not decoded again (and is reported again). A storage error (any LakeError other than
    a vanished object) propagates: good images are never set aside because the lake was down.

    Decoding: on CUDA with torchvision, nvjpeg batches and a torch resize on the device (other images on
    CPU); on CPU, DCT-scaled JPEG decoding in ``workers`` threads (``executor="threads"``; ``"auto"``: threads,
    measured at least as fast, see :data:`AUTO_EXECUTOR`) or spawned processes (``"processes"``, chunks of
    :data:`DECODE_CHUNK` images a task, workers that import only Pillow and numpy). Images are read in
    ``io_workers`` threads from an S3 lake, in one thread from a local lake.
    ``progress(done, total)`` is called as images are decoded.
    """
    from clipfood_assets.modeling.efficiency import available_cores

    spec = resize_crop_of(ImagePreprocessor(processor), draft=True)
    signature = store_signature(processor)
    digest = signature_digest(signature)
    prefix = preprocessed_images_prefix(digest)
    plan = _plan_update(lake, bucket, prefix, source_prefixes, rebuild=rebuild)
    failures = list(plan.known_failures)
    decoded_by: Counter = Counter()
    decoder_name, decode_seconds = "none", 0.0
    with tempfile.TemporaryDirectory(prefix="clipfood-image-store-") as tmp:
        first = max(plan.shard_numbers, default=-1) + 1
        writer = _ShardWriter(lake, bucket, prefix, spec.shape, shard_bytes, first, Path(tmp))
        _copy_compacted_rows(lake, bucket, prefix, plan, writer, Path(tmp))
        if plan.to_decode:
            # A local lake's read is a page-cache copy: more reader threads only contend for the
            # GIL with the decoders (2 cores: 3,223 img/s with one reader, 2,379 with eight).
            readers = 1 if isinstance(lake, LocalLake) else io_workers
            decoder_name, stream = _decode_stream(
                plan.to_decode, _fetcher(lake, bucket), spec, device=torch.device(device),
                workers=max(1, int(workers or available_cores())), executor=executor, io_workers=readers)
            start = time.perf_counter()
            for done, (key, pixels, reason, detail, decoder) in enumerate(stream, start=1):
                etag, size = plan.identity[key]
                if pixels is None:
                    failures.append(DecodeFailure(key, reason, detail, etag, size))
                else:
                    writer.add(key, pixels, etag, size, decoder)
                    decoded_by[decoder] += 1
                if progress is not None:
                    progress(done, len(plan.to_decode))
            writer.flush()
            decode_seconds = time.perf_counter() - start
        writer.flush()

    shards = {**plan.keep_shards, **writer.written}
    new_index = pd.concat([plan.kept_rows[INDEX_COLUMNS], pd.DataFrame(writer.index_rows, columns=INDEX_COLUMNS)],
                          ignore_index=True)
    new_index = new_index.astype({"shard_row": "int64", "source_size": "int64"})
    new_index = new_index.sort_values("image_key", kind="stable").reset_index(drop=True)
    failure_table = pd.DataFrame(
        [(f.key, f.etag, int(f.size), f.reason, f.detail) for f in sorted(failures, key=lambda f: f.key)],
        columns=FAILURE_COLUMNS,
    )
    _commit(lake, bucket, prefix, signature, digest, spec, shards, new_index, failure_table)
    # Only now may anything the new manifest does not name go: old shards and leftovers of interrupted builds.
    deleted = []
    for name in sorted(plan.existing_shards):
        if name not in shards:
            lake.delete(bucket, prefix + name)
            deleted.append(name)
    return BuildResult(
        uri=plan.uri, prefix=prefix, digest=digest, signature=signature, images=len(new_index),
        new=len(plan.to_decode) - plan.changed, changed=plan.changed, reused=len(plan.kept), removed=plan.removed,
        moved=len(plan.moved_rows), decoded=len(plan.to_decode), failures=failures, shards=len(shards),
        shards_written=sorted(writer.written), shards_deleted=deleted,
        bytes=sum(info["size"] for info in shards.values()),
        bytes_written=sum(info["size"] for info in writer.written.values()), decode_seconds=decode_seconds,
        decoder=decoder_name, decoded_by=dict(decoded_by),
    )


@dataclass
class _Plan:
    """What an update keeps, moves, decodes and may delete (computed before anything is written)."""

    uri: str
    identity: dict[str, tuple[str, int]]  # source key -> (ETag, size)
    kept: pd.DataFrame  # index rows whose source is unchanged
    kept_rows: pd.DataFrame  # ... of them, those in shards kept as they are
    moved_rows: pd.DataFrame  # ... and those in shards compacted away
    keep_shards: dict[str, dict]
    compact: set[str]
    old_shards: dict[str, dict]
    known_failures: list[DecodeFailure]
    to_decode: list[str]
    changed: int
    removed: int
    existing_shards: set[str]  # shard files in the lake or the old manifest
    shard_numbers: list[int] = field(default_factory=list)


def _plan_update(lake: Lake, bucket: str, prefix: str, source_prefixes: Sequence[str], *, rebuild: bool) -> _Plan:
    """Compare the sources' identities with the committed index: what is reused, compacted, decoded."""
    uri = lake.uri(bucket, prefix)
    sources = _list_sources(lake, bucket, source_prefixes)
    state = None
    if not rebuild:
        try:
            state = _read_state(lake, bucket, prefix, strict=False)
        except (ImageStoreError, ValueError) as exc:
            log.warning("image store %s cannot be read (%s); building it again", uri, exc)
    index = state.index if state is not None else _empty_index()
    old_failures = state.failures if state is not None else _empty_failures()
    old_shards = state.shards if state is not None else {}

    identity = {key: (obj.etag, int(obj.size)) for key, obj in sources.items()}
    same = [identity.get(k) == (e, int(s)) for k, e, s in
            zip(index["image_key"], index["source_etag"], index["source_size"])]
    kept = index[np.array(same, dtype=bool)].reset_index(drop=True)
    in_index = set(index["image_key"])
    known_failures = [
        DecodeFailure(k, r, d, e, int(s)) for k, e, s, r, d in old_failures[FAILURE_COLUMNS].itertuples(index=False)
        if identity.get(k) == (e, int(s))
    ]
    skip = set(kept["image_key"]) | {f.key for f in known_failures}
    to_decode = [k for k in sources if k not in skip]

    live = kept.groupby("shard").size().to_dict()
    compact = {name for name, info in old_shards.items() if 0 < live.get(name, 0) and 2 * live[name] < info["rows"]}
    keep_shards = {name: info for name, info in old_shards.items() if live.get(name, 0) and name not in compact}
    listed = [o.key[len(prefix):] for o in lake.list(bucket, prefix)]
    existing = {n for n in [*listed, *old_shards] if _SHARD_NAME.match(n)}
    return _Plan(
        uri=uri, identity=identity, kept=kept, kept_rows=kept[kept["shard"].isin(keep_shards)],
        moved_rows=kept[kept["shard"].isin(compact)], keep_shards=keep_shards, compact=compact,
        old_shards=old_shards, known_failures=known_failures, to_decode=to_decode,
        changed=sum(1 for k in to_decode if k in in_index), removed=len(in_index - set(sources)),
        existing_shards=existing, shard_numbers=[int(_SHARD_NAME.match(n).group(1)) for n in existing],
    )


def _copy_compacted_rows(lake: Lake, bucket: str, prefix: str, plan: _Plan, writer: _ShardWriter, tmp: Path) -> None:
    """Compaction first: the live rows of half-empty shards move to the new shards, together, in their order."""
    for name, rows in plan.moved_rows.groupby("shard", sort=True):
        local = lake.get_file(bucket, prefix + name, tmp / f"old-{name}")
        if _sha256_file(local) != plan.old_shards[name]["sha256"]:
            raise ImageStoreError(f"image store {plan.uri}: shard {name} does not match its manifest's sha256")
        array = np.load(local, mmap_mode="r", allow_pickle=False)
        for row in rows.sort_values("shard_row").itertuples(index=False):
            writer.add(row.image_key, np.asarray(array[row.shard_row]), row.source_etag, row.source_size,
                       row.decoder)
        del array
        local.unlink()


def _fetcher(lake: Lake, bucket: str) -> Callable[[str], bytes | None]:
    def fetch(key: str) -> bytes | None:  # None: listed, but gone when read
        try:
            return lake.get_bytes(bucket, key)
        except ObjectNotFound:
            return None

    return fetch






def _commit(lake, bucket, prefix, signature, digest, spec, shards, index, failures) -> dict:
    """index.csv, failures.csv, signature.json, then the manifest (the commit point)."""
    files = [{"name": name, "size": info["size"], "etag": info["etag"]} for name, info in sorted(shards.items())]
    for name, data, ctype in (
        (INDEX_NAME, write_table(index), "text/csv"),
        (FAILURES_NAME, write_table(failures), "text/csv"),
        (SIGNATURE_NAME, json.dumps(signature, indent=2, sort_keys=True).encode("utf-8"), "application/json"),
    ):
        info = lake.put_bytes(bucket, prefix + name, data, ctype)
        files.append({"name": name, "size": len(data), "etag": info.etag})
    metadata = {
        "format": STORE_FORMAT,
        "signature_digest": digest,
        "shape": list(spec.shape),
        "images": len(index),
        "shards": {name: {"rows": info["rows"], "sha256": info["sha256"]} for name, info in sorted(shards.items())},
    }
    return write_manifest(lake, bucket, prefix, ARTIFACT, files, metadata)


# --------------------------------------------------------------------------------------- reading


def resolve_store_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Local folder for shard copies: ``cache_dir``, else ``<CLIPFOOD_CACHE_DIR>/image_store``
    (default ``<CLIPFOOD_HOME>/cache/image_store``), read from the environment when called."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return ClipfoodSettings.from_env().cache_dir.expanduser() / "image_store"


class PackedImageStore:
    """:class:`~clipfood_assets.modeling.images.ImageSource` over a committed store: uint8
    ``[n, 3, H, W]`` CPU tensors (row i = keys[i]) read from memory-mapped shards.

    Opening reads the manifest and index and checks every shard exists with its recorded size
    (ImageStoreError otherwise, StoreNotFound when there is no store). Each shard is copied once into
    ``cache_dir/<hash of the store's URI>/`` and verified against the manifest's sha256 (a local copy
    whose size or mtime changed is hashed again; one that fails is downloaded again), then opened with
    ``np.load(mmap_mode="r")``: the page cache, not this process, holds the pixels. Local paths come
    only from shard names checked against ``shard-NNNNN.npy``; image keys never become paths.

    ``pin_memory`` (None: when CUDA is available) returns page-locked tensors for fast, asynchronous
    copies to the GPU. Thread-safe.
    """

    def __init__(self, lake: Lake, bucket: str, prefix: str, *, cache_dir: str | os.PathLike | None = None,
                 pin_memory: bool | None = None, download_workers: int = 2) -> None:
        self.lake, self.bucket = lake, bucket
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.uri = lake.uri(bucket, self.prefix)
        state = _read_state(lake, bucket, self.prefix, strict=True)
        if state is None:
            raise StoreNotFound(f"no image store at {self.uri} (no {manifest_key(self.prefix, ARTIFACT)}): "
                                "materialize the preprocessed_images asset")
        meta = state.manifest["metadata"]
        self.digest: str = str(meta.get("signature_digest", ""))
        self.shape: tuple[int, int, int] = tuple(int(v) for v in meta["shape"])
        self._shard_names = sorted(state.shards)
        self._shards = state.shards
        number = {name: i for i, name in enumerate(self._shard_names)}
        index = state.index
        self._keys: list[str] = index["image_key"].tolist()
        self._where: dict[str, tuple[int, int]] = dict(
            zip(self._keys, zip(index["shard"].map(number).tolist(), index["shard_row"].tolist())))
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        uri_hash = hashlib.sha256(self.uri.encode("utf-8")).hexdigest()[:16]
        self.cache_dir = resolve_store_cache_dir(cache_dir) / uri_hash
        self._lock = threading.Lock()
        self._loading: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, download_workers), thread_name_prefix="image-store-get")
        self.downloads = 0  # shards copied from the lake by this reader

    @classmethod
    def open(cls, lake: Lake, processor, *, bucket: str = FINE_TUNING_ZONE, **kwargs) -> PackedImageStore:
        """The store of ``processor``'s preprocessing (StoreNotFound when none was built)."""
        signature = store_signature(processor)
        digest = signature_digest(signature)
        store = cls(lake, bucket, preprocessed_images_prefix(digest), **kwargs)
        if store.digest != digest:
            store.close()
            raise ImageStoreError(f"image store {store.uri} records signature digest {store.digest!r}, not {digest!r}")
        return store

    # -- the ImageSource protocol

    def prefetch(self, keys: Sequence[str]) -> None:
        """Start copying (and verifying) the shards that hold ``keys`` in the background; unknown keys are ignored."""
        for shard in sorted({self._where[k][0] for k in keys if k in self._where}):
            self._future(shard)

    def get(self, keys: Sequence[str]) -> torch.Tensor:
        """uint8 ``[len(keys), 3, H, W]``, row i = keys[i] (a key may repeat). ValueError naming the first
        key the store does not hold; ImageStoreError when a shard cannot be read or verified."""
        if isinstance(keys, str):
            raise TypeError("get takes a sequence of image keys, not one key")
        try:
            located = np.array([self._where[k] for k in keys], dtype=np.int64).reshape(len(keys), 2)
        except KeyError as exc:
            raise ValueError(f"image {exc.args[0]!r} is not in the image store {self.uri} ({len(self)} images); "
                             "materialize preprocessed_images again") from None
        if self.pin_memory:
            out = torch.empty((len(keys), *self.shape), dtype=torch.uint8, pin_memory=True)
        else:
            # numpy allocates: under torch's deterministic mode (CPU training) torch.empty fills the
            # new tensor with a parallel kernel, and in a data thread that second OpenMP team spins
            # on the cores the training step needs (measured: every step 2x slower).
            out = torch.from_numpy(np.empty((len(keys), *self.shape), dtype=np.uint8))
        target = out.numpy()
        shards, rows = located[:, 0], located[:, 1]
        for shard in np.unique(shards):
            positions = np.flatnonzero(shards == shard)
            order = positions[np.argsort(rows[positions], kind="stable")]  # ascending rows: sequential reads
            target[order] = self._array(int(shard))[rows[order]]
        return out

    def forget(self, keys: Sequence[str]) -> None:
        """Nothing to drop: the page cache, not this process, holds the shards' pixels."""

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._loading.clear()

    # -- the rest

    def keys(self) -> list[str]:
        """Every image key the store holds (sorted)."""
        return list(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._keys)

    def __enter__(self) -> PackedImageStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PackedImageStore({self.uri!r}, images={len(self)}, shape={self.shape})"

    def _future(self, shard: int) -> Future:
        with self._lock:
            future = self._loading.get(shard)
            if future is None or (future.done() and future.exception() is not None):
                future = self._pool.submit(self._load, self._shard_names[shard])
                self._loading[shard] = future
            return future

    def _array(self, shard: int) -> np.ndarray:
        return self._future(shard).result()

    def _load(self, name: str) -> np.ndarray:
        info = self._shards[name]
        path = self.cache_dir / _check_shard_name(name, self.uri)
        if not self._verified(path, info):
            self._download(name, path, info)
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ImageStoreError(f"image store {self.uri}: local copy {path} of {name} does not load ({exc})") from None
        if array.dtype != np.uint8 or tuple(array.shape) != (info["rows"], *self.shape):
            raise ImageStoreError(f"image store {self.uri}: shard {name} holds {array.dtype} {tuple(array.shape)}, "
                                  f"expected uint8 {(info['rows'], *self.shape)}")
        return array

    def _sidecar(self, path: Path) -> Path:
        return path.with_name(f".{path.name}.verified.json")

    def _verified(self, path: Path, info: dict) -> bool:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return False
        if stat.st_size != info["size"]:
            return False
        sidecar = self._sidecar(path)
        try:
            seen = json.loads(sidecar.read_text())
            if seen == {"sha256": info["sha256"], "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}:
                return True
        except (OSError, ValueError):
            pass
        if _sha256_file(path) != info["sha256"]:  # changed since verified: a damaged or foreign copy
            log.warning("image store %s: local copy %s fails its sha256; downloading it again", self.uri, path)
            return False
        self._write_sidecar(path, info)
        return True

    def _write_sidecar(self, path: Path, info: dict) -> None:
        stat = path.stat()
        sidecar = self._sidecar(path)
        tmp = sidecar.with_name(f"{sidecar.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps({"sha256": info["sha256"], "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))
        os.replace(tmp, sidecar)

    def _download(self, name: str, path: Path, info: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{uuid.uuid4().hex}.download")
        try:
            try:
                self.lake.get_file(self.bucket, self.prefix + name, tmp)
            except ObjectNotFound:
                raise ImageStoreError(f"image store {self.uri}: shard {name} named by the index is missing; "
                                      "materialize preprocessed_images again") from None
            if _sha256_file(tmp) != info["sha256"]:
                raise ImageStoreError(f"image store {self.uri}: shard {name} in the lake does not match the sha256 "
                                      "its manifest records; materialize preprocessed_images again")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self._write_sidecar(path, info)
        self.downloads += 1
