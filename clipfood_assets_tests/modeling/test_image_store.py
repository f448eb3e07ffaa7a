"""The packed image store: builds on both lakes, updates incrementally, returns the reference pixels
within the stated tolerance, survives bad images and damaged caches, and refuses inconsistent stores."""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from clipfood_assets.data.decode import decode_rgb
from clipfood_assets.lake.artifacts import manifest_key
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, PREPROCESSED_IMAGES_PREFIX
from clipfood_assets.lake.tables import read_table, write_table
from clipfood_assets.modeling.base_model import build_image_processor
from clipfood_assets.modeling.embed import ImagePreprocessor
from clipfood_assets.modeling.image_decode import (
    CORRUPT,
    EMPTY,
    NOT_AN_IMAGE,
    TOO_LARGE,
    decode_resize_crop,
    resize_crop_of,
)
from clipfood_assets.modeling.image_store import (
    ARTIFACT,
    INDEX_NAME,
    RESIZE_TOLERANCE,
    TOLERANCE,
    ImageStoreError,
    PackedImageStore,
    StoreNotFound,
    resize_crop_uint8,
    resolve_store_cache_dir,
    store_prefix,
    update_image_store,
)
from clipfood_assets.modeling.images import ImageSource

SIZE = 32  # model input of these tests: a draft decode kicks in for sources wider than 64 px
ROW_BYTES = 3 * SIZE * SIZE


def _photo(seed: int, size: tuple[int, int] = (96, 80), fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """A smooth 'photo' (gradient, shapes, blur): JPEG-like content, unlike noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 / w), (y * 255 / h), ((x + y) * 127 / (w + h) + rng.integers(0, 128))], -1)
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(5, max(6, min(w, h) // 3))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    image = image.filter(ImageFilter.GaussianBlur(1.2)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A PNG whose header declares 400 M pixels in a few dozen bytes (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def processor():
    return build_image_processor(SIZE)


@pytest.fixture(scope="module")
def reference(processor):
    return ImagePreprocessor(processor)


def _put(lake, images: dict[str, bytes]) -> None:
    for key, data in images.items():
        lake.put_bytes(FINE_TUNING_ZONE, key, data)


def _within(actual: torch.Tensor, expected: torch.Tensor, tolerance: dict) -> tuple[float, int]:
    diff = (actual.to(torch.int16) - expected.to(torch.int16)).abs()
    mean, top = float(diff.float().mean()), int(diff.max())
    assert mean <= tolerance["mean_abs"] and top <= tolerance["max_abs"], (mean, top, tolerance)
    return mean, top


def _counting(lake):
    """Count reads of each key and every upload, on any backend."""
    reads: Counter = Counter()
    uploads: list[str] = []
    get_bytes, put_file = lake.get_bytes, lake.put_file

    def counted_get(bucket, key):
        reads[key] += 1
        return get_bytes(bucket, key)

    def counted_put(bucket, key, path, content_type=None):
        uploads.append(key)
        return put_file(bucket, key, path, content_type)

    lake.get_bytes, lake.put_file = counted_get, counted_put
    return reads, uploads


IMAGES = {f"images/dish__r{i:02d}_{i % 3}.jpg": _photo(i) for i in range(10)}
AUGMENTED = {f"augmented_images/dish__r{i:02d}_aug{i}.jpg": _photo(100 + i, (70, 120)) for i in range(3)}


def test_build_and_read_on_every_lake(lake, processor, reference, tmp_path):
    _put(lake, {**IMAGES, **AUGMENTED, "datasets/other.csv": b"not an image, not under images/"})
    result = update_image_store(lake, processor, shard_bytes=4 * ROW_BYTES, executor="threads", workers=2)
    assert (result.images, result.new, result.decoded, result.failures) == (13, 13, 13, [])
    assert result.shards == 4 and result.bytes == sum(
        lake.stat(FINE_TUNING_ZONE, result.prefix + name).size for name in result.shards_written)
    assert result.prefix == store_prefix(processor) and result.prefix.startswith(PREPROCESSED_IMAGES_PREFIX)
    names = {o.key[len(result.prefix):] for o in lake.list(FINE_TUNING_ZONE, result.prefix)}
    assert names == {"shard-00000.npy", "shard-00001.npy", "shard-00002.npy", "shard-00003.npy", "index.csv",
                     "failures.csv", "signature.json", f"_{ARTIFACT}.manifest.json"}
    signature = json.loads(lake.get_bytes(FINE_TUNING_ZONE, result.prefix + "signature.json"))
    assert signature["reference"] == reference.signature() and signature["tolerance"] == TOLERANCE
    # shards are plain .npy, loadable without pickle
    shard = np.load(io.BytesIO(lake.get_bytes(FINE_TUNING_ZONE, result.prefix + "shard-00000.npy")), allow_pickle=False)
    assert shard.dtype == np.uint8 and shard.shape == (4, 3, SIZE, SIZE)

    with PackedImageStore.open(lake, processor, cache_dir=tmp_path / "cache") as store:
        assert isinstance(store, ImageSource)
        assert len(store) == 13 and store.keys() == sorted({**IMAGES, **AUGMENTED})
        assert "images/dish__r00_0.jpg" in store and "images/nope.jpg" not in store
        keys = store.keys()
        store.prefetch(keys)
        pixels = store.get(keys)
        assert pixels.dtype == torch.uint8 and pixels.shape == (13, 3, SIZE, SIZE)
        for row, key in enumerate(keys):
            _within(pixels[row], reference.to_uint8({**IMAGES, **AUGMENTED}[key]), TOLERANCE)
        assert store.downloads == 4
        assert store.get([]).shape == (0, 3, SIZE, SIZE)


def test_store_pixels_are_the_preprocessors_fast_path_and_near_the_reference(processor, reference):
    """The worker decoder equals ImagePreprocessor(fast_jpeg_decode=True) bit for bit; both are within
    TOLERANCE of the full decode, on the synthetic 512 px photos at the tiny model's 64 px and CLIP's 224."""
    from clipfood_assets.synthetic import generate_recipes, render_dish_image

    recipes = generate_recipes(3, seed=2)
    sources = [render_dish_image(r, 1, seed=2) for r in recipes]
    sources += [_photo(1, (640, 400)), _photo(2, (60, 90)), _photo(3, fmt="PNG", mode="RGBA"), _photo(4, mode="L")]
    for size in (64, 224):
        proc = build_image_processor(size)
        fast = ImagePreprocessor(proc, fast_jpeg_decode=True)
        ref = ImagePreprocessor(proc)
        spec = resize_crop_of(ref)
        for data in sources:
            mine = torch.from_numpy(decode_resize_crop(data, spec))
            assert torch.equal(mine, fast.to_uint8(data))
            _within(mine, ref.to_uint8(data), TOLERANCE)


def test_torch_resize_matches_pil_within_its_tolerance():
    """The CUDA path's resize+crop, run here on CPU over the same decoded RGB as the reference."""
    from clipfood_assets.synthetic import generate_recipes, render_dish_image

    sources = [render_dish_image(generate_recipes(1, seed=4)[0], 1, seed=4), _photo(5, (640, 400)),
               _photo(6, (50, 90)), _photo(7, (40, 30))]  # the last is smaller than the crop: padded
    for size in (32, 224):
        ref = ImagePreprocessor(build_image_processor(size))
        spec = resize_crop_of(ref)
        full = [torch.from_numpy(np.asarray(decode_rgb(d)).copy()).permute(2, 0, 1).contiguous() for d in sources]
        batch = resize_crop_uint8(full, spec)
        assert batch.shape == (len(sources), 3, size, size) and batch.dtype == torch.uint8
        for row, data in enumerate(sources):
            _within(batch[row], ref.to_uint8(data), RESIZE_TOLERANCE)


def test_update_decodes_only_new_and_changed_images(local_lake, processor, reference, tmp_path):
    lake = local_lake
    _put(lake, IMAGES)
    first = update_image_store(lake, processor, shard_bytes=4 * ROW_BYTES, executor="threads")
    shard_etags = {n: lake.stat(FINE_TUNING_ZONE, first.prefix + n).etag for n in first.shards_written}
    reads, uploads = _counting(lake)

    again = update_image_store(lake, processor, shard_bytes=4 * ROW_BYTES, executor="threads")
    assert (again.decoded, again.reused, again.shards_written, again.shards_deleted) == (0, 10, [], [])
    assert not [k for k in reads if k.startswith("images/")] and uploads == []

    keys = sorted(IMAGES)
    changed, gone = keys[0], keys[8:]  # the last shard holds keys 8 and 9: it goes
    lake.put_bytes(FINE_TUNING_ZONE, changed, _photo(50))
    for key in gone:
        lake.delete(FINE_TUNING_ZONE, key)
    added = {"images/new__r90_0.jpg": _photo(90), "augmented_images/new__r91_aug.jpg": _photo(91)}
    _put(lake, added)
    reads.clear()
    result = update_image_store(lake, processor, shard_bytes=4 * ROW_BYTES, executor="threads")
    assert sorted(k for k in reads if not k.startswith(PREPROCESSED_IMAGES_PREFIX)) == sorted([changed, *added])
    assert (result.new, result.changed, result.removed, result.decoded) == (2, 1, 2, 3)
    assert result.images == 10 and result.shards_written == ["shard-00003.npy"]
    assert result.shards_deleted == ["shard-00002.npy"]
    # shard 0 lost one row of four (changed), shard 1 none: neither rewritten nor uploaded
    assert [u.rsplit("/", 1)[1] for u in uploads] == ["shard-00003.npy"]
    for name in ("shard-00000.npy", "shard-00001.npy"):
        assert lake.stat(FINE_TUNING_ZONE, first.prefix + name).etag == shard_etags[name]

    with PackedImageStore.open(lake, processor, cache_dir=tmp_path / "cache") as store:
        assert not set(gone) & set(store.keys()) and set(added) <= set(store.keys())
        _within(store.get([changed])[0], reference.to_uint8(_photo(50)), TOLERANCE)


def test_shards_mostly_orphaned_are_compacted(local_lake, processor, reference, tmp_path):
    _put(local_lake, IMAGES)
    first = update_image_store(local_lake, processor, shard_bytes=5 * ROW_BYTES, executor="threads")
    assert first.shards == 2
    keys = sorted(IMAGES)
    for key in keys[:3]:  # shard 0 keeps 2 of 5 rows: compacted; shard 1 untouched
        local_lake.delete(FINE_TUNING_ZONE, key)
    result = update_image_store(local_lake, processor, shard_bytes=5 * ROW_BYTES, executor="threads")
    assert (result.moved, result.decoded, result.removed) == (2, 0, 3)
    assert result.shards_deleted == ["shard-00000.npy"] and result.shards_written == ["shard-00002.npy"]
    with PackedImageStore.open(local_lake, processor, cache_dir=tmp_path / "cache") as store:
        assert store.keys() == keys[3:]
        for key, pixels in zip(keys[3:5], store.get(keys[3:5])):
            _within(pixels, reference.to_uint8(IMAGES[key]), TOLERANCE)


def test_bad_images_are_recorded_not_fatal_and_not_retried(lake, processor):
    good = dict(list(IMAGES.items())[:3])
    bad = {
        "images/truncated__r1_0.jpg": _photo(11)[:200],
        "images/empty__r2_0.jpg": b"",
        "images/text__r3_0.jpg": b"%PDF-1.4 definitely not an image",
        "images/bomb__r4_0.png": _bomb_png(),
    }
    _put(lake, {**good, **bad})
    result = update_image_store(lake, processor, shard_bytes=2 * ROW_BYTES, executor="threads")
    assert result.images == 3
    reasons = {f.key: f.reason for f in result.failures}
    assert reasons == {"images/truncated__r1_0.jpg": CORRUPT, "images/empty__r2_0.jpg": EMPTY,
                       "images/text__r3_0.jpg": NOT_AN_IMAGE, "images/bomb__r4_0.png": TOO_LARGE}
    assert all(f.detail for f in result.failures)
    failures = read_table(lake.get_bytes(FINE_TUNING_ZONE, result.prefix + "failures.csv"))
    assert sorted(failures["image_key"]) == sorted(bad)
    # Unchanged bad images are reported again without being decoded again; a fixed one is decoded.
    lake.put_bytes(FINE_TUNING_ZONE, "images/truncated__r1_0.jpg", _photo(11))
    again = update_image_store(lake, processor, shard_bytes=2 * ROW_BYTES, executor="threads")
    assert again.decoded == 1 and again.images == 4
    assert again.failures_by_reason() == {EMPTY: 1, NOT_AN_IMAGE: 1, TOO_LARGE: 1}


def test_process_pool_build_equals_the_thread_build(local_lake, processor, tmp_path):
    _put(local_lake, IMAGES)
    threads = update_image_store(local_lake, processor, shard_bytes=3 * ROW_BYTES, executor="threads")
    with PackedImageStore.open(local_lake, processor, cache_dir=tmp_path / "a") as store:
        expected = store.get(sorted(IMAGES))
    processes = update_image_store(local_lake, processor, shard_bytes=3 * ROW_BYTES, executor="processes",
                                   workers=2, rebuild=True)
    assert threads.decoder == "cpu-threads" and processes.decoder == "cpu-processes"
    assert processes.decoded == 10 and set(processes.shards_deleted) == set(threads.shards_written)
    with PackedImageStore.open(local_lake, processor, cache_dir=tmp_path / "b") as store:
        assert torch.equal(store.get(sorted(IMAGES)), expected)


def test_a_damaged_local_copy_is_downloaded_again(s3_lake, processor, tmp_path):
    _put(s3_lake, IMAGES)
    update_image_store(s3_lake, processor, shard_bytes=4 * ROW_BYTES, executor="threads")
    keys = sorted(IMAGES)
    with PackedImageStore.open(s3_lake, processor, cache_dir=tmp_path) as store:
        expected = store.get(keys)
        copies = sorted(store.cache_dir.glob("shard-*.npy"))
    assert len(copies) == 3
    data = bytearray(copies[0].read_bytes())
    data[-50:] = bytes(50)  # same size, other pixels
    copies[0].write_bytes(bytes(data))
    with PackedImageStore.open(s3_lake, processor, cache_dir=tmp_path) as store:
        assert torch.equal(store.get(keys), expected)
        assert store.downloads == 1  # only the damaged copy
    copies[1].write_bytes(b"garbage")  # wrong size
    with PackedImageStore.open(s3_lake, processor, cache_dir=tmp_path) as store:
        assert torch.equal(store.get(keys), expected) and store.downloads == 1


def test_an_index_naming_a_missing_shard_is_refused(local_lake, processor, tmp_path):
    _put(local_lake, IMAGES)
    result = update_image_store(local_lake, processor, shard_bytes=4 * ROW_BYTES, executor="threads")
    local_lake.delete(FINE_TUNING_ZONE, result.prefix + "shard-00001.npy")
    with pytest.raises(ImageStoreError, match=r"shard-00001\.npy.*missing"):
        PackedImageStore.open(local_lake, processor, cache_dir=tmp_path)
    # The builder recovers: the lost rows are decoded again.
    repaired = update_image_store(local_lake, processor, shard_bytes=4 * ROW_BYTES, executor="threads")
    assert repaired.decoded == 4 and repaired.images == 10
    PackedImageStore.open(local_lake, processor, cache_dir=tmp_path).close()

    # An index naming a shard the manifest does not list.
    index = read_table(local_lake.get_bytes(FINE_TUNING_ZONE, result.prefix + INDEX_NAME))
    index.loc[0, "shard"] = "shard-00099.npy"
    local_lake.put_bytes(FINE_TUNING_ZONE, result.prefix + INDEX_NAME, write_table(index))
    with pytest.raises(ImageStoreError, match=r"shard-00099\.npy which the manifest does not list"):
        PackedImageStore.open(local_lake, processor, cache_dir=tmp_path)


def test_no_store_and_missing_keys_are_clear_errors(local_lake, processor, tmp_path):
    with pytest.raises(StoreNotFound, match="materialize the preprocessed_images asset"):
        PackedImageStore.open(local_lake, processor, cache_dir=tmp_path)
    _put(local_lake, IMAGES)
    update_image_store(local_lake, processor, executor="threads")
    with PackedImageStore.open(local_lake, processor, cache_dir=tmp_path) as store:
        with pytest.raises(ValueError, match=r"'images/absent\.jpg' is not in the image store .*preprocessed_images"):
            store.get([sorted(IMAGES)[0], "images/absent.jpg"])
        with pytest.raises(TypeError):
            store.get(sorted(IMAGES)[0])


def test_duplicated_keys_and_any_order(local_lake, processor, tmp_path):
    _put(local_lake, IMAGES)
    update_image_store(local_lake, processor, shard_bytes=3 * ROW_BYTES, executor="threads")
    keys = sorted(IMAGES)
    with PackedImageStore.open(local_lake, processor, cache_dir=tmp_path, pin_memory=False) as store:
        everything = store.get(keys)
        asked = [keys[7], keys[1], keys[7], keys[0], keys[9], keys[1]]
        got = store.get(asked)
        for row, key in enumerate(asked):
            assert torch.equal(got[row], everything[keys.index(key)])


def test_hostile_keys_never_leave_the_cache_folder(local_lake, processor, tmp_path):
    odd = {"images/ünïcode dish__r1_0.jpg": _photo(1), "images/a..b__r2_0.jpg": _photo(2),
           "augmented_images/deep/er/x__r3_0.jpg": _photo(3)}
    _put(local_lake, odd)
    result = update_image_store(local_lake, processor, shard_bytes=ROW_BYTES, executor="threads")
    cache = tmp_path / "cache"
    with PackedImageStore.open(local_lake, processor, cache_dir=cache) as store:
        assert store.keys() == sorted(odd)
        assert store.get(sorted(odd)).shape == (3, 3, SIZE, SIZE)
        for hostile in ("../../etc/passwd", "/etc/passwd", "images/../../x"):
            with pytest.raises(ValueError, match="not in the image store"):
                store.get([hostile])
    assert all(p.resolve().is_relative_to(cache.resolve()) for p in cache.rglob("*"))
    # A manifest/index naming a shard outside the store folder is refused before any path is built.
    key = manifest_key(result.prefix, ARTIFACT)
    manifest = json.loads(local_lake.get_bytes(FINE_TUNING_ZONE, key))
    manifest["metadata"]["shards"]["../../../evil.npy"] = {"rows": 1, "sha256": "0" * 64}
    local_lake.put_bytes(FINE_TUNING_ZONE, key, json.dumps(manifest).encode())
    with pytest.raises(ImageStoreError, match="invalid shard"):
        PackedImageStore.open(local_lake, processor, cache_dir=cache)


def test_an_empty_zone_builds_an_empty_store(local_lake, processor, tmp_path):
    result = update_image_store(local_lake, processor, executor="threads")
    assert (result.images, result.shards, result.decoded) == (0, 0, 0)
    with PackedImageStore.open(local_lake, processor, cache_dir=tmp_path) as store:
        assert len(store) == 0 and store.get([]).shape == (0, 3, SIZE, SIZE)


def test_cache_folder_follows_the_argument_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPFOOD_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_store_cache_dir() == tmp_path / "env" / "image_store"
    assert resolve_store_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("CLIPFOOD_CACHE_DIR")
    assert resolve_store_cache_dir().name == "image_store"


def test_the_cuda_batch_path_with_a_stand_in_nvjpeg(monkeypatch, processor, reference):
    """decode_batch_cuda's plumbing on CPU: a stand-in for torchvision's decode_jpeg (PIL, full decode) takes
    the JPEGs; PNGs, EXIF-rotated JPEGs and bad bytes go to the CPU decoder, results stay in order."""
    import sys
    import types

    from clipfood_assets.modeling.image_store import CPU_DECODER, CUDA_DECODER, decode_batch_cuda

    taken = []

    def decode_jpeg(data, mode=None, device=None):
        if isinstance(data, list):
            return [decode_jpeg(d, mode, device) for d in data]
        taken.append(len(data))
        rgb = np.asarray(decode_rgb(bytes(data.numpy())))
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous().to(device)

    fake = types.ModuleType("torchvision.io")
    fake.decode_jpeg = decode_jpeg
    fake.ImageReadMode = types.SimpleNamespace(RGB="RGB")
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.io", fake)

    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(io.BytesIO(_photo(3))).save(rotated, format="JPEG", quality=90, exif=exif)
    items = [("a.jpg", _photo(1)), ("b.png", _photo(2, fmt="PNG")), ("c.jpg", rotated.getvalue()),
             ("d.jpg", b"garbage"), ("e.jpg", _photo(4, (300, 200)))]
    results = decode_batch_cuda(items, resize_crop_of(reference), torch.device("cpu"))
    assert [r[0] for r in results] == [k for k, _ in items]
    assert [r[4] for r in results] == [CUDA_DECODER, CPU_DECODER, CPU_DECODER, "", CUDA_DECODER]
    assert results[3][1] is None and results[3][2] == NOT_AN_IMAGE
    assert len(taken) == 2
    for key, pixels, *_ in results:
        if pixels is not None:
            _within(torch.from_numpy(pixels), reference.to_uint8(dict(items)[key]), TOLERANCE)
