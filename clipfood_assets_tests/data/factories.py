"""Builders for good and hostile test inputs (recipes lines, image keys, image bytes)."""

from __future__ import annotations

import json
import struct
import zlib
from io import BytesIO

import numpy as np
from PIL import Image


def recipe_line(recipe_id: object, title: object = "Banana French Toast", field: str = "title_text_raw", **extra) -> bytes:
    """One recipes.jsonl line as bytes."""
    return (json.dumps({"id": recipe_id, field: title, **extra}) + "\n").encode("utf-8")


def synthetic_id(i: int) -> str:
    """10 lowercase hex chars, like the synthetic trusted zone."""
    return f"{(i * 2654435761) % 16**10:010x}"


def image_bytes(mode: str = "RGB", size: tuple[int, int] = (32, 24), fmt: str = "PNG", seed: int = 0, **save) -> bytes:
    """A noisy image in any PIL mode, encoded as fmt."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    image = rgb.convert(mode) if mode not in ("P",) else rgb.quantize(16)
    buf = BytesIO()
    image.save(buf, fmt, **save)
    return buf.getvalue()


def rgba_png(size: tuple[int, int] = (16, 16)) -> bytes:
    """Fully transparent red on the left half, opaque blue on the right."""
    array = np.zeros((size[1], size[0], 4), dtype=np.uint8)
    array[:, : size[0] // 2] = (255, 0, 0, 0)
    array[:, size[0] // 2 :] = (0, 0, 255, 255)
    buf = BytesIO()
    Image.fromarray(array, "RGBA").save(buf, "PNG")
    return buf.getvalue()


def palette_png_with_transparency(size: tuple[int, int] = (16, 16)) -> bytes:
    """Palette image whose index 0 (every pixel) is transparent."""
    image = Image.new("P", size, 0)
    image.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    buf = BytesIO()
    image.save(buf, "PNG", transparency=0)
    return buf.getvalue()


def gray16_png(size: tuple[int, int] = (16, 16), value: int = 32896) -> bytes:
    """16-bit grayscale PNG, every pixel ``value`` (0..65535)."""
    buf = BytesIO()
    Image.fromarray(np.full((size[1], size[0]), value, dtype=np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def exif_rotated_jpeg(size: tuple[int, int] = (40, 20), orientation: int = 6) -> bytes:
    """JPEG stored landscape with an EXIF orientation tag (6 = rotate 90 CW to display)."""
    image = Image.new("RGB", size, (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = BytesIO()
    image.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A VALID 1-bit PNG of width x height (400 MP by default) that compresses to ~50 KB.

    Decoding it would allocate width*height bytes; the validator must refuse it from the header.
    """
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits, all zero
    compressor = zlib.compressobj(9)
    block = row * 100
    parts = [compressor.compress(block) for _ in range(height // 100)]
    parts.append(compressor.compress(row * (height % 100)))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b"")
    )
