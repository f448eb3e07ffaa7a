"""Persistent preprocessed-image cache: hits equal fresh decodes, damage is a miss, writes are atomic;
gradient checkpointing leaves the training step unchanged."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from clipfood_assets.modeling.clip import load_clip
from clipfood_assets.modeling.config import LoraSettings
from clipfood_assets.modeling.embed import ImagePreprocessor, embed_images
from clipfood_assets.modeling.image_cache import (
    CACHE_DIR_ENV,
    CACHE_ENABLED_ENV,
    ImageTensorCache,
    resolve_cache_root,
)
from clipfood_assets.modeling.lora import apply_adapters, logit_scale_parameter
from clipfood_assets.modeling.losses import FeatureCacheAccumulator, contrastive_loss
from clipfood_assets.modeling.train import enable_gradient_checkpointing


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_clip(tiny_model_dir)


def _jpeg(seed: int, size: tuple[int, int] = (80, 60)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class CountingDecoder:
    """The real preprocessor's decode, counting how often it runs (thread-safe)."""

    def __init__(self, preprocessor: ImagePreprocessor) -> None:
        self.preprocessor = preprocessor
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, data: bytes) -> np.ndarray:
        with self._lock:
            self.calls += 1
        return self.preprocessor.decode_uint8(data).numpy()


@pytest.fixture
def uncached(tiny):
    return ImagePreprocessor(tiny[1], image_cache=False)


def _entries(root) -> list:
    return sorted(root.rglob("*.safetensors"))


def test_hit_returns_the_fresh_decode_without_decoding(uncached, tmp_path):
    cache = ImageTensorCache(tmp_path, uncached.signature())
    decoder = CountingDecoder(uncached)
    data = _jpeg(0)
    first = cache.get_or_compute(data, decoder)
    second = cache.get_or_compute(data, decoder)
    fresh = uncached.decode_uint8(data).numpy()
    assert decoder.calls == 1
    assert second.dtype == np.uint8 and second.shape == fresh.shape == (3, 64, 64)
    assert np.array_equal(first, fresh) and np.array_equal(second, fresh)
    assert second.flags.writeable  # torch.from_numpy needs writable memory
    assert len(_entries(tmp_path)) == 1
    assert list(tmp_path.rglob("*.tmp")) == []  # the temporary file was moved into place


def test_changed_bytes_or_signature_is_a_miss(uncached, tmp_path):
    decoder = CountingDecoder(uncached)
    signature = uncached.signature()
    cache = ImageTensorCache(tmp_path, signature)
    cache.get_or_compute(_jpeg(0), decoder)
    other = cache.get_or_compute(_jpeg(1), decoder)
    assert decoder.calls == 2 and np.array_equal(other, uncached.decode_uint8(_jpeg(1)).numpy())
    resized = ImageTensorCache(tmp_path, signature | {"shortest_edge": 32})
    resized.get_or_compute(_jpeg(0), decoder)
    assert decoder.calls == 3
    assert resized.directory != cache.directory and len(_entries(tmp_path)) == 3


def test_preprocessing_settings_change_the_signature(tiny):
    processor = tiny[1]
    plain = ImagePreprocessor(processor, image_cache=False).signature()
    assert plain == ImagePreprocessor(processor, image_cache=False).signature()
    assert plain != ImagePreprocessor(processor, fast_jpeg_decode=True, image_cache=False).signature()
    processor.image_processor.size = {"shortest_edge": 48}
    try:
        assert plain != ImagePreprocessor(processor, image_cache=False).signature()
    finally:
        processor.image_processor.size = {"shortest_edge": plain["shortest_edge"]}


@pytest.mark.parametrize("damage", ["truncate", "flip_pixel", "garbage", "empty", "wrong_dtype"])
def test_damaged_entry_is_a_miss_and_is_rewritten(uncached, tmp_path, damage):
    from safetensors.numpy import load, save

    cache = ImageTensorCache(tmp_path, uncached.signature())
    decoder = CountingDecoder(uncached)
    data = _jpeg(3)
    fresh = cache.get_or_compute(data, decoder)
    path = cache.path_for(data)
    stored = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(stored[: len(stored) // 2])
    elif damage == "flip_pixel":  # still parses: only the checksum catches it
        path.write_bytes(stored[:-1] + bytes([stored[-1] ^ 0xFF]))
    elif damage == "garbage":
        path.write_bytes(b"\xff" * 64)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(save({"pixels": fresh.astype(np.float32)}))
    again = cache.get_or_compute(data, decoder)
    assert decoder.calls == 2 and np.array_equal(again, fresh)
    assert np.array_equal(load(path.read_bytes())["pixels"], fresh)  # rewritten whole
    assert np.array_equal(cache.get_or_compute(data, decoder), fresh) and decoder.calls == 2


def test_concurrent_writers_of_one_key_agree(uncached, tmp_path):
    cache = ImageTensorCache(tmp_path, uncached.signature())
    data = _jpeg(5)
    fresh = uncached.decode_uint8(data).numpy()
    barrier = threading.Barrier(8)

    def racer(_):
        barrier.wait()  # all threads miss at once and write the same file
        return ImageTensorCache(tmp_path, uncached.signature()).get_or_compute(data, CountingDecoder(uncached))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(racer, range(8)))
    assert all(np.array_equal(r, fresh) for r in results)
    assert len(_entries(tmp_path)) == 1 and list(tmp_path.rglob("*.tmp")) == []
    decoder = CountingDecoder(uncached)
    assert np.array_equal(cache.get_or_compute(data, decoder), fresh) and decoder.calls == 0


def test_unwritable_cache_still_computes(uncached, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = ImageTensorCache(blocker, uncached.signature())  # mkdir under a file fails
    decoder = CountingDecoder(uncached)
    out = cache.get_or_compute(_jpeg(0), decoder)
    assert np.array_equal(out, uncached.decode_uint8(_jpeg(0)).numpy()) and decoder.calls == 1


def test_cache_location_and_switch_come_from_the_environment(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "env_cache"))
    monkeypatch.delenv(CACHE_ENABLED_ENV, raising=False)
    assert resolve_cache_root() == tmp_path / "env_cache"
    assert resolve_cache_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_cache_root(False) is None
    monkeypatch.setenv(CACHE_ENABLED_ENV, "0")
    assert resolve_cache_root() is None
    assert resolve_cache_root(True) == tmp_path / "env_cache"  # an explicit True wins
    preprocessor = ImagePreprocessor(tiny[1])
    assert preprocessor.tensor_cache is None
    preprocessor.to_uint8(_jpeg(0))
    assert not (tmp_path / "env_cache").exists()  # disabled: nothing written, computed every time


def test_embed_images_with_cache_equals_without(tiny, synthetic_data, tmp_path):
    model, processor = tiny
    keys = sorted(synthetic_data.images)[:7]
    reads = []

    def load(key: str) -> bytes:
        reads.append(key)
        return synthetic_data.load_image(key)

    plain, _ = embed_images(model, processor, keys, load, batch_size=3, device="cpu", image_cache=False)
    cold, _ = embed_images(model, processor, keys, load, batch_size=3, device="cpu", image_cache=tmp_path)
    assert len(_entries(tmp_path)) == len(keys)
    stamps = {p: p.stat().st_mtime_ns for p in _entries(tmp_path)}
    warm, _ = embed_images(model, processor, keys, load, batch_size=3, device="cpu", image_cache=tmp_path)
    assert np.array_equal(cold, plain) and np.array_equal(warm, plain)
    assert {p: p.stat().st_mtime_ns for p in _entries(tmp_path)} == stamps  # warm pass only read
    assert len(reads) == 3 * len(keys)  # bytes are still read (they are the key), not decoded


# --------------------------------------------------------------------------- gradient checkpointing


def _lora_step(random_clip, checkpointing: bool) -> tuple[float, dict[str, torch.Tensor], int]:
    torch.manual_seed(0)
    model = random_clip(dropout=0.2)
    if checkpointing:
        enable_gradient_checkpointing(model)
    layer_calls = []
    mlp = model.vision_model.encoder.layers[0].mlp
    forward = mlp.forward

    def counted_forward(*args, **kwargs):  # module hooks do not fire on the backward replay; this does
        layer_calls.append(1)
        return forward(*args, **kwargs)

    mlp.forward = counted_forward
    model = apply_adapters(model, LoraSettings(r=4, lora_dropout=0.1)).train()
    logit_scale = logit_scale_parameter(model)
    generator = torch.Generator().manual_seed(1)
    micros = [
        {"pixels": torch.randn(3, 3, 32, 32, generator=generator),
         "ids": torch.randint(0, 98, (3, 6), generator=generator), "recipes": [f"r{i}", f"r{i + 1}", f"r{i + 2}"]}
        for i in (0, 3)
    ]
    for micro in micros:
        micro["ids"][:, -1] = 99  # eos ends every caption

    def encode(micro):
        image = model.get_image_features(pixel_values=micro["pixels"]).pooler_output
        text = model.get_text_features(input_ids=micro["ids"]).pooler_output
        return {"image": image, "text": text}

    def loss_fn(features, batch):
        recipes = [r for m in batch for r in m["recipes"]]
        return contrastive_loss(features["image"], features["text"], logit_scale, recipe_ids=recipes, kind="clip")

    torch.manual_seed(2)  # same dropout stream for both runs
    loss = FeatureCacheAccumulator(encode, loss_fn).accumulate(micros)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return float(loss), grads, len(layer_calls)


def test_gradient_checkpointing_gives_the_same_step(random_clip):
    plain_loss, plain, plain_calls = _lora_step(random_clip, checkpointing=False)
    checkpointed_loss, checkpointed, checkpointed_calls = _lora_step(random_clip, checkpointing=True)
    assert checkpointed_calls > plain_calls  # the layer really was recomputed in backward
    assert plain_loss == pytest.approx(checkpointed_loss, rel=1e-6)
    assert plain.keys() == checkpointed.keys() and any("lora_" in n for n in plain)
    assert any(float(g.abs().sum()) > 0 for n, g in plain.items() if "vision" in n and "lora_" in n)
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], rtol=1e-5, atol=1e-7), name
