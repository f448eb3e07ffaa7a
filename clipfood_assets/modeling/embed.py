"""Batched CLIP embeddings of images (from encoded bytes) and captions.

Images are decoded and resized to uint8 tensors in a thread pool that runs ahead of the
model (PIL releases the GIL while decoding and resizing), so the forward pass rarely waits;
normalisation to the model's mean/std happens on the device, batch-wise.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import PIL
import torch
from PIL import Image

from clipfood_assets.data.decode import DECODER_VERSION, decode_rgb
from clipfood_assets.modeling.clip import autocast_context, compiled_region, dynamic_rows, towers_compiled
from clipfood_assets.modeling.efficiency import (
    available_cores,
    peak_memory,
    reset_peak_memory,
)
from clipfood_assets.modeling.image_decode import decode_resize_crop, resize_crop_of
from clipfood_assets.modeling.images import DecodedImages, ImageSource, LoadImage

# Decoded images allowed in flight: bounds memory while keeping the model fed.
_PREFETCH_BATCHES = 3
# Threads reading the packed store ahead of a CUDA model. One copies ~30k 224 px images/s into pinned
# memory by the GPU review's estimate, no more than the compiled ViT-B/32 forward on an H200 takes; the
# copies release the GIL, so a few readers keep the forward pass from waiting (on 2 CPU cores, reading
# alone: 14.0-14.9k img/s with one, 16.1-17.2k with four). A CPU model computes on the readers' cores: one.
STORE_READERS = 4


@dataclass(frozen=True)
class EmbedStats:
    """Throughput and memory of one embedding pass."""

    items: int
    seconds: float
    items_per_s: float
    peak_memory_bytes: int
    peak_memory_kind: str

    def to_dict(self) -> dict:
        return asdict(self)


def _pil_resample(value) -> int:
    return int(getattr(value, "value", value))


def _size_value(size, key: str):
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


class ImagePreprocessor:
    """CLIP image preprocessing split in two halves.

    ``to_uint8(bytes)`` (thread-safe, CPU): decode, EXIF orientation, RGB, resize of the
    shortest edge and centre crop exactly as the processor does, kept as uint8 [3, H, W]
    (what the packed image store holds). ``normalize(batch)`` (device): rescale to [0, 1]
    and standardise.
    """

    def __init__(self, processor, *, fast_jpeg_decode: bool = False) -> None:
        image_processor = getattr(processor, "image_processor", processor)
        self.fast_jpeg_decode = fast_jpeg_decode
        self.image_processor = image_processor
        self.shortest_edge = _size_value(image_processor.size, "shortest_edge") if image_processor.do_resize else None
        crop = image_processor.crop_size if image_processor.do_center_crop else None
        self.crop = (_size_value(crop, "height"), _size_value(crop, "width")) if crop is not None else None
        self.resample = _pil_resample(image_processor.resample)
        # Only the standard CLIP recipe (shortest edge + centre crop) takes the direct PIL path.
        self.fast_path = bool(self.shortest_edge and self.crop and None not in self.crop)
        scale = image_processor.rescale_factor if image_processor.do_rescale else 1.0
        mean = image_processor.image_mean if image_processor.do_normalize else (0.0, 0.0, 0.0)
        std = image_processor.image_std if image_processor.do_normalize else (1.0, 1.0, 1.0)
        self._scale = float(scale)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def signature(self) -> dict:
        """Everything that decides the uint8 output: stored pixels are valid only for an equal signature."""
        signature = {
            "preprocessor": "clip_uint8_chw/1",
            "decoder": DECODER_VERSION,  # cached tensors from another decoder are other pixels
            "fast_path": self.fast_path,
            "fast_jpeg_decode": self.fast_jpeg_decode,
            "shortest_edge": self.shortest_edge,
            "crop": list(self.crop) if self.crop else None,
            "resample": self.resample,
            "pillow": PIL.__version__,  # resampling filters have changed between releases
        }
        if not self.fast_path:  # the processor itself does the resizing: all its settings count
            settings = self.image_processor.to_dict()
            signature["image_processor"] = json.loads(json.dumps(settings, sort_keys=True, default=str))
        return signature

    def decode(self, data: bytes) -> Image.Image:
        """PIL RGB image from encoded bytes, with the camera's EXIF orientation applied.

        With ``fast_jpeg_decode`` a JPEG much larger than the model input is decoded at a
        reduced DCT scale (PIL ``draft``, 1/2 to 1/8), never below the resize target: ~5x
        faster for 512 px photos at 64 px, pixel values within a few levels of a full decode.
        """
        # The platform's one decoder (16-bit scaled, alpha on the fixed background, EXIF
        # upright): the model sees the pixels that were validated and augmented.
        reduce = self.shortest_edge if self.fast_jpeg_decode and self.fast_path else None
        return decode_rgb(data, min_short_side=reduce)

    def to_uint8(self, data: bytes) -> torch.Tensor:
        """uint8 tensor [3, H, W] of the resized, centre-cropped image decoded from ``data``."""
        if self.fast_path:  # the packed store's own steps (one owner of the resize and crop)
            return torch.from_numpy(decode_resize_crop(data, resize_crop_of(self, draft=self.fast_jpeg_decode)))
        out = self.image_processor(images=self.decode(data), do_rescale=False, do_normalize=False,
                                   return_tensors="np")
        return torch.from_numpy(np.clip(np.rint(out["pixel_values"][0]), 0, 255).astype(np.uint8))

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 pixel values [B, 3, H, W] from a uint8 batch (on the batch's device)."""
        mean, std = self._statistics_on(batch.device)
        return (batch.to(torch.float32) * self._scale - mean) / std

    def _statistics_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Copied to a device once: a copy per batch from pageable memory waits for the device.
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = (self._mean.to(device), self._std.to(device))
        return self._on_device[key]


def iter_uint8_batches(
    keys: Sequence[str], load_image: LoadImage, preprocessor: ImagePreprocessor, *, batch_size: int, workers: int
) -> Iterator[torch.Tensor]:
    """Yield uint8 batches in key order while later images are read and decoded in ``workers``
    threads (:class:`~clipfood_assets.modeling.images.DecodedImages`); memory stays bounded."""
    source = DecodedImages(load_image, preprocessor, workers)
    try:
        yield from iter_source_batches(keys, source, batch_size=batch_size)
    finally:
        source.close()


def iter_source_batches(keys: Sequence[str], source: ImageSource, *, batch_size: int,
                        pin_memory: bool = False, readers: int = 1) -> Iterator[torch.Tensor]:
    """Yield uint8 batches of ``source`` in key order: the next batches (at least
    :data:`_PREFETCH_BATCHES`, one more than ``readers``) are asked for ahead (``prefetch``) and
    read in ``readers`` threads; each yielded batch is then forgotten by the source (``forget``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = [list(keys[i:i + batch_size]) for i in range(0, len(keys), batch_size)]
    depth = max(_PREFETCH_BATCHES, readers + 1)

    def read(chunk: list[str]) -> torch.Tensor:
        batch = source.get(chunk)
        return batch.pin_memory() if pin_memory and not batch.is_pinned() else batch

    def ahead(index: int):
        source.prefetch(chunks[index])
        return pool.submit(read, chunks[index])

    with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="clip-batches") as pool:
        pending = deque(ahead(i) for i in range(min(depth, len(chunks))))
        for index in range(len(chunks)):
            batch = pending.popleft().result()
            if index + depth < len(chunks):
                pending.append(ahead(index + depth))
            source.forget(chunks[index])
            yield batch


def default_decode_workers() -> int:
    """Image decoding threads: one per core (at least 2 so reading overlaps decoding), at most 8."""
    return max(2, min(8, available_cores()))


def _l2_normalised(features: torch.Tensor) -> torch.Tensor:
    # Stays on the device: a copy to the host per batch would wait for the device each time.
    return torch.nn.functional.normalize(features.float(), dim=-1)


def _to_host(chunks: list[torch.Tensor], dim: int) -> np.ndarray:
    """The embeddings of every batch, copied to the host once."""
    if not chunks:
        return np.zeros((0, dim), dtype=np.float32)
    return torch.cat(chunks).cpu().numpy()


def _stats(items: int, seconds: float, device: torch.device) -> EmbedStats:
    peak, kind = peak_memory(device)
    return EmbedStats(items, seconds, items / seconds if seconds > 0 else 0.0, peak, kind)


@torch.inference_mode()
def embed_images(
    model,
    processor,
    keys: Sequence[str],
    images: ImageSource | LoadImage,
    *,
    batch_size: int,
    device: torch.device | str,
    precision: str = "auto",
    workers: int | None = None,
    fast_jpeg_decode: bool = False,
    readers: int | None = None,
) -> tuple[np.ndarray, EmbedStats]:
    """L2-normalised float32 image embeddings [len(keys), D], in key order, and throughput.

    ``images``: an :class:`~clipfood_assets.modeling.images.ImageSource` (the packed store: batches
    read ahead in ``readers`` threads, by default :data:`STORE_READERS` on CUDA and one elsewhere,
    pinned on CUDA) or ``load_image(key) -> encoded bytes`` (JPEG/PNG..., decoded in ``workers``
    threads ahead of the model).  The time covers the whole path, source to embeddings on the host.
    """
    device = torch.device(device)
    preprocessor = ImagePreprocessor(processor, fast_jpeg_decode=fast_jpeg_decode)
    reset_peak_memory(device)
    start = time.perf_counter()
    chunks = []
    if isinstance(images, ImageSource):
        on_cuda = device.type == "cuda"
        batches = iter_source_batches(keys, images, batch_size=batch_size, pin_memory=on_cuda,
                                      readers=readers or (STORE_READERS if on_cuda else 1))
    else:
        batches = iter_uint8_batches(keys, images, preprocessor, batch_size=batch_size,
                                     workers=workers or default_decode_workers())
    compiled = towers_compiled(model)
    with compiled_region("the image embedding") if compiled else contextlib.nullcontext():
        for uint8_batch in batches:
            pixels = preprocessor.normalize(uint8_batch.to(device, non_blocking=True))
            with autocast_context(device, precision):
                features = model.get_image_features(pixel_values=dynamic_rows(pixels) if compiled else pixels)
            chunks.append(_l2_normalised(features.pooler_output[:len(pixels)]))
    embeddings = _to_host(chunks, model.config.projection_dim)
    return embeddings, _stats(len(keys), time.perf_counter() - start, device)


def text_max_length(model, tokenizer) -> int:
    """Longest token sequence the text tower accepts (tokenizer and position table agree)."""
    limit = model.config.text_config.max_position_embeddings
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < limit:
        limit = tokenizer_limit
    return int(limit)


def tokenize(tokenizer, texts: Sequence[str], max_length: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Token ids padded to the longest caption of the batch (not to 77), truncated at ``max_length``."""
    encoded = tokenizer(
        list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {"input_ids": encoded["input_ids"].to(device), "attention_mask": encoded["attention_mask"].to(device)}


@torch.inference_mode()
def embed_texts(
    model,
    processor,
    texts: Sequence[str],
    *,
    batch_size: int,
    device: torch.device | str,
    precision: str = "auto",
) -> tuple[np.ndarray, EmbedStats]:
    """L2-normalised float32 caption embeddings [len(texts), D], in order, and throughput."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    tokenizer = getattr(processor, "tokenizer", processor)
    max_length = text_max_length(model, tokenizer)
    reset_peak_memory(device)
    start = time.perf_counter()
    chunks = []
    compiled = towers_compiled(model)
    with compiled_region("the caption embedding") if compiled else contextlib.nullcontext():
        for first in range(0, len(texts), batch_size):
            inputs = tokenize(tokenizer, texts[first:first + batch_size], max_length, device)
            rows = len(inputs["input_ids"])
            if compiled:
                inputs = {name: dynamic_rows(tensor, (0, 1)) for name, tensor in inputs.items()}
            with autocast_context(device, precision):
                features = model.get_text_features(**inputs).pooler_output
            chunks.append(_l2_normalised(features[:rows]))
    embeddings = _to_host(chunks, model.config.projection_dim)
    return embeddings, _stats(len(texts), time.perf_counter() - start, device)
