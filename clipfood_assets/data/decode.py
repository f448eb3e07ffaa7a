"""The one image decoder: encoded bytes -> upright 8-bit RGB, the same pixels everywhere.

Validation, augmentation, training, evaluation, search, the preprocessed-image cache and the
report's thumbnails all decode through :func:`decode_rgb`. Two decoders that disagree give
the model a different photo than the one validated and augmented: Pillow's plain
``convert("RGB")`` clips 16-bit grayscale to white and drops alpha to whatever colour the
transparent pixels happen to hold (often black), while a composite shows them on white.

Only Pillow and numpy: importable from every layer (data, modeling, reporting) and on
machines without Dagster.
"""

from __future__ import annotations

import math
from io import BytesIO

import numpy as np
from PIL import Image, ImageOps

# Part of every cache signature that stores decoded pixels: bump it when the pixels change.
DECODER_VERSION = "rgb/2"
# Transparent pixels are composited on this one fixed colour, everywhere.
BACKGROUND_RGB = (255, 255, 255)
DEFAULT_MAX_PIXELS = 40_000_000
# Decoders we let Pillow use. Restricting them keeps exotic plugins (EPS calls Ghostscript,
# for instance) away from untrusted bytes; the trusted zone only promises JPEG/PNG.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


class ImageTooLarge(ValueError):
    """Declared pixel count above the explicit decompression-bomb limit."""


def open_checked(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open (header only) and enforce our own pixel limit before anything is decoded."""
    image = Image.open(BytesIO(data), formats=IMAGE_FORMATS)
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLarge(f"{width}x{height} = {width * height} pixels > limit {max_pixels}")
    return image


def has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def _composite(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (*BACKGROUND_RGB, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _wide_gray_to_rgb(image: Image.Image) -> Image.Image:
    """16/32-bit grayscale (PNG ``I;16``): scale to 8 bits; Pillow's convert() would clip at 255."""
    array = np.asarray(image)
    if image.mode == "F":
        gray = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    else:
        gray = np.clip(np.rint(array.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    rgb = Image.fromarray(gray, mode="L").convert("RGB")
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):  # a 16-bit tRNS gray value marks the transparent pixels
        alpha = np.where(array == transparent, 0, 255).astype(np.uint8)
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.fromarray(alpha, mode="L"))
        return _composite(rgba)
    return rgb


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: 16-bit scaled, transparency composited on BACKGROUND_RGB."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return _wide_gray_to_rgb(image)
    if has_alpha(image):
        return _composite(image.convert("RGBA"))
    return image.convert("RGB")  # L, 1, P without transparency, CMYK, YCbCr


def decode_rgb(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_short_side: int | None = None
) -> Image.Image:
    """Decode image bytes to an upright 8-bit RGB image.

    Enforces ``max_pixels`` from the header (raises :class:`ImageTooLarge`, a ValueError),
    applies the EXIF orientation and converts any mode with :func:`to_rgb`. With
    ``min_short_side`` a JPEG more than twice that size is decoded at a reduced DCT scale
    (Pillow's ``draft``, 1/2 to 1/8) whose shorter side stays at least ``min_short_side``:
    several times faster when the caller shrinks the photo anyway; colours are handled alike.
    """
    with open_checked(data, max_pixels) as image:
        if min_short_side and image.format == "JPEG":
            width, height = image.size
            factor = min_short_side / min(width, height)
            if factor < 0.5:
                image.draft(None, (math.ceil(width * factor), math.ceil(height * factor)))
        image.load()
        upright = ImageOps.exif_transpose(image)
    return to_rgb(upright)
