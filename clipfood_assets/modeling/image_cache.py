"""Persistent cache of preprocessed images: uint8 tensors on local disk, keyed by content.

Decoding a 512 px JPEG costs milliseconds per image per core, enough to starve an
accelerator; reading a ready uint8 tensor costs microseconds.  Each entry is keyed by the
sha256 of the encoded image bytes and lives under a directory named after a signature of
the preprocessing (sizes, resampling, crop, library versions, a format version), so a
changed image or changed preprocessing is simply a different key: nothing is ever stale.

Entries are safetensors files (no pickle) written to a temporary file and moved into place
with ``os.replace``, so concurrent processes never read half a file.  A file that does not
parse, has the wrong dtype/shape or fails its CRC32 is a miss and is rewritten; a cache that
cannot be written (read-only or full disk) is logged and skipped, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from clipfood_assets.paths import STATE_DIR

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "CLIPFOOD_CACHE_DIR"
CACHE_ENABLED_ENV = "CLIPFOOD_IMAGE_CACHE"
DEFAULT_CACHE_DIR = STATE_DIR / "cache" / "images"
# Bump when the stored layout or the meaning of a stored tensor changes.
CACHE_FORMAT_VERSION = "1"
_TENSOR = "pixels"

ImageCacheOption = bool | str | os.PathLike | None


def content_key(image_bytes: bytes) -> str:
    """sha256 hex digest of the encoded image bytes (the cache key of its content)."""
    return hashlib.sha256(image_bytes).hexdigest()


def signature_digest(signature: Mapping) -> str:
    """Stable short digest of a JSON-serialisable preprocessing signature."""
    text = json.dumps({"format": CACHE_FORMAT_VERSION, **signature}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def resolve_cache_root(option: ImageCacheOption = None) -> Path | None:
    """Cache directory for ``option``, or None when caching is off.

    ``None``: from the environment (off when ``CLIPFOOD_IMAGE_CACHE`` is 0/false/off/no,
    else ``CLIPFOOD_CACHE_DIR`` or ``<state dir>/cache/images``); ``False``: off;
    ``True``: on at the environment's (or default) directory; a path: on at that directory.
    """
    if option is False:
        return None
    if option is None or option is True:
        if option is None and os.environ.get(CACHE_ENABLED_ENV, "1").strip().lower() in {"0", "false", "off", "no"}:
            return None
        return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()
    return Path(option).expanduser()


class ImageTensorCache:
    """uint8 tensors of preprocessed images under ``root/<signature digest>/<sha[:2]>/<sha>.safetensors``.

    Thread- and process-safe: readers see either no file or a complete one; a damaged file
    is a miss.  The stored array is returned exactly as ``compute`` produced it (any
    uint8 shape; the CLIP preprocessor stores [3, H, W]).
    """

    def __init__(self, root: str | os.PathLike, signature: Mapping) -> None:
        self.signature = dict(signature)
        self.directory = Path(root) / signature_digest(self.signature)
        self._described = False

    def path_for(self, image_bytes: bytes) -> Path:
        """File that holds (or will hold) the tensor of ``image_bytes``."""
        key = content_key(image_bytes)
        return self.directory / key[:2] / f"{key}.safetensors"

    def get_or_compute(self, image_bytes: bytes, compute: Callable[[bytes], np.ndarray]) -> np.ndarray:
        """The cached uint8 array of ``image_bytes``, or ``compute(image_bytes)`` stored for next time."""
        path = self.path_for(image_bytes)
        cached = self._read(path)
        if cached is not None:
            return cached
        array = np.ascontiguousarray(compute(image_bytes))
        if array.dtype != np.uint8:
            raise TypeError(f"image cache stores uint8 arrays, compute returned {array.dtype}")
        self._write(path, array)
        return array

    def _read(self, path: Path) -> np.ndarray | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("image cache: cannot read %s (%s); decoding instead", path, exc)
            return None
        try:
            array = load_safetensors(data)[_TENSOR]
            header_len = int.from_bytes(data[:8], "little")
            metadata = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
        except Exception as exc:  # any damage (truncation, bad header, wrong key) is a miss
            logger.warning("image cache: damaged entry %s (%s); recomputing", path, exc)
            return None
        if array.dtype != np.uint8 or metadata.get("crc32") != str(zlib.crc32(array.tobytes())):
            logger.warning("image cache: entry %s fails its check; recomputing", path)
            return None
        # safetensors hands back a read-only view; torch.from_numpy wants writable memory.
        return array if array.flags.writeable else array.copy()

    def _write(self, path: Path, array: np.ndarray) -> None:
        metadata = {"crc32": str(zlib.crc32(array.tobytes())), "format": CACHE_FORMAT_VERSION}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._describe()
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:16]}.", suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as stream:
                    stream.write(save_safetensors({_TENSOR: array}, metadata=metadata))
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:  # a cache that cannot be written only costs speed
            logger.warning("image cache: cannot write %s (%s); continuing without it", path, exc)

    def _describe(self) -> None:
        """signature.json next to the entries, so a human can tell the directories apart."""
        if self._described:
            return
        target = self.directory / "signature.json"
        if not target.exists():
            handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".signature.", suffix=".tmp")
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump({"format": CACHE_FORMAT_VERSION, **self.signature}, stream, indent=2, sort_keys=True)
            os.replace(temporary, target)
        self._described = True
