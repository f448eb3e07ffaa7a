"""Image sources: bytes decoded once per key and forgotten when asked, batches in key order."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from clipfood_assets.modeling.base_model import build_image_processor
from clipfood_assets.modeling.embed import (
    ImagePreprocessor,
    iter_source_batches,
    iter_uint8_batches,
)
from clipfood_assets.modeling.images import DecodedImages, ImageSource


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class CountingLoader:
    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs, self.reads, self._lock = blobs, {}, threading.Lock()

    def __call__(self, key: str) -> bytes:
        with self._lock:
            self.reads[key] = self.reads.get(key, 0) + 1
        return self.blobs[key]


@pytest.fixture
def preprocessor():
    return ImagePreprocessor(build_image_processor(32))


def test_decoded_images_decode_once_until_forgotten(preprocessor):
    loader = CountingLoader({f"k{i}": _jpeg(i) for i in range(4)})
    source = DecodedImages(loader, preprocessor, workers=2)
    try:
        assert isinstance(source, ImageSource)
        first = source.get(["k0", "k1", "k0"])
        assert first.shape == (3, 3, 32, 32) and first.dtype == torch.uint8
        assert torch.equal(first[0], first[2]) and torch.equal(first[0], preprocessor.to_uint8(loader.blobs["k0"]))
        source.get(["k1", "k0"])
        assert loader.reads == {"k0": 1, "k1": 1}
        source.forget(["k0"])
        assert torch.equal(source.get(["k0"])[0], first[0])
        assert loader.reads["k0"] == 2  # forgotten, so decoded again
    finally:
        source.close()


def test_a_bad_image_is_named(preprocessor):
    source = DecodedImages({"ok": _jpeg(0), "bad": b"not an image"}.__getitem__, preprocessor, workers=1)
    try:
        with pytest.raises(ValueError, match="cannot read image 'bad'"):
            source.get(["ok", "bad"])
    finally:
        source.close()


def test_batches_keep_key_order_with_keys_repeated_across_batches(preprocessor):
    blobs = {f"k{i}": _jpeg(i) for i in range(5)}
    keys = ["k0", "k1", "k2", "k0", "k3", "k4", "k1", "k0"]
    expected = torch.stack([preprocessor.to_uint8(blobs[k]) for k in keys])
    for batch_size in (1, 3, 8):
        got = torch.cat(list(iter_uint8_batches(keys, blobs.__getitem__, preprocessor, batch_size=batch_size,
                                                workers=2)))
        assert torch.equal(got, expected), batch_size


def test_a_single_pass_holds_only_its_window(preprocessor):
    loader = CountingLoader({f"k{i}": _jpeg(i) for i in range(12)})
    source = DecodedImages(loader, preprocessor, workers=2)
    try:
        for _ in iter_source_batches(list(loader.blobs), source, batch_size=2):
            pass
        assert source._futures == {}  # every yielded batch was forgotten
        assert all(count == 1 for count in loader.reads.values())
    finally:
        source.close()
