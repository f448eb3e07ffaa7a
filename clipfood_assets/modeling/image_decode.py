"""CPU decoding for the packed image store: encoded bytes -> uint8 ``[3, H, W]`` numpy arrays.

Only Pillow and numpy are imported here (no torch, no transformers, no pandas), so a spawned
worker process starts in a fraction of a second: the store build decodes in a
``ProcessPoolExecutor`` whose workers import this module and nothing heavier.

:func:`decode_resize_crop` is CLIP's standard recipe (resize of the shortest edge, centre crop):
:meth:`clipfood_assets.modeling.embed.ImagePreprocessor.to_uint8` calls it too, so training,
evaluation and the store resize and crop in one place; with DCT scaling (``draft``) the pixels
stay within the store's tolerance of the full decode (see ``image_store.TOLERANCE``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipfood_assets.data.decode import ImageTooLarge, decode_rgb

# Failure reasons recorded by the store build (key + reason + detail), never fatal for the others.
EMPTY = "empty"                # zero bytes
NOT_AN_IMAGE = "not_an_image"  # no decoder recognises the bytes
TOO_LARGE = "too_large"        # declared pixel count above the limit (decompression bomb)
CORRUPT = "corrupt"            # a recognised image that fails to decode (truncated, bad data)
VANISHED = "vanished"          # listed, but gone when read


@dataclass(frozen=True)
class ResizeCrop:
    """CLIP's uint8 preprocessing: shortest edge to ``shortest_edge`` px (PIL ``resample`` filter),
    then a centre crop of ``crop_height`` x ``crop_width`` (padded with black when smaller)."""

    shortest_edge: int
    crop_height: int
    crop_width: int
    resample: int  # a PIL.Image.Resampling value
    draft: bool = True  # JPEG DCT scaling (PIL draft), never below the resize target

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(3, crop_height, crop_width)``: the shape of every decoded image."""
        return (3, self.crop_height, self.crop_width)


def resize_crop_of(preprocessor, *, draft: bool = True) -> ResizeCrop:
    """The :class:`ResizeCrop` of an ``ImagePreprocessor``; ValueError when it is not CLIP's
    shortest-edge + centre-crop recipe (the processor then resizes by itself: not packable)."""
    if not preprocessor.fast_path:
        raise ValueError(
            "the packed image store needs a processor with a shortest-edge resize and a centre crop "
            f"(got shortest_edge={preprocessor.shortest_edge!r}, crop={preprocessor.crop!r})"
        )
    height, width = preprocessor.crop
    return ResizeCrop(int(preprocessor.shortest_edge), int(height), int(width), int(preprocessor.resample), draft)


def resized_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to ``shortest_edge`` (the processor's rounding)."""
    if width <= height:
        return shortest_edge, int(shortest_edge * height / width)
    return int(shortest_edge * width / height), shortest_edge


def decode_resize_crop(data: bytes, spec: ResizeCrop) -> np.ndarray:
    """uint8 ``[3, crop_height, crop_width]`` of encoded image ``data``.

    Raises what the platform decoder raises: ``ImageTooLarge`` (a ValueError) for a declared
    pixel count above the limit, ``PIL.UnidentifiedImageError`` for bytes that are no image,
    OSError/SyntaxError/ValueError for damaged ones.
    """
    image = decode_rgb(data, min_short_side=spec.shortest_edge if spec.draft else None)
    new_size = resized_size(image.size[0], image.size[1], spec.shortest_edge)
    if new_size != image.size:
        image = image.resize(new_size, resample=spec.resample)
    crop_w, crop_h = spec.crop_width, spec.crop_height
    if (crop_w, crop_h) != image.size:
        if crop_w > image.size[0] or crop_h > image.size[1]:
            padded = Image.new("RGB", (max(crop_w, image.size[0]), max(crop_h, image.size[1])))
            padded.paste(image, ((padded.size[0] - image.size[0]) // 2, (padded.size[1] - image.size[1]) // 2))
            image = padded
        top, left = (image.size[1] - crop_h) // 2, (image.size[0] - crop_w) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def failure_reason(exc: BaseException) -> str:
    """The recorded reason for an image that could not be decoded."""
    if isinstance(exc, (ImageTooLarge, Image.DecompressionBombError)):
        return TOO_LARGE
    if isinstance(exc, UnidentifiedImageError):
        return NOT_AN_IMAGE
    return CORRUPT


Decoded = tuple[str, "np.ndarray | None", str, str]  # key, pixels or None, reason, detail


def decode_one(key: str, data: bytes, spec: ResizeCrop) -> Decoded:
    """``(key, pixels, "", "")`` or ``(key, None, reason, detail)``: a bad image is a result, not an error."""
    if not data:
        return key, None, EMPTY, "zero bytes"
    try:
        return key, decode_resize_crop(data, spec), "", ""
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this image's, recorded by the caller
        return key, None, failure_reason(exc), f"{type(exc).__name__}: {exc}"[:300]


def decode_chunk(spec: ResizeCrop, items: list[tuple[str, bytes]]) -> list[Decoded]:
    """Decode a chunk of ``(key, bytes)`` (the unit of work sent to a worker process)."""
    return [decode_one(key, data, spec) for key, data in items]
