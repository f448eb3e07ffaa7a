"""Where training and evaluation get their pixels: preprocessed uint8 images by image key.

Two sources satisfy :class:`ImageSource`: :class:`DecodedImages` decodes encoded bytes
(JPEG/PNG from the lake) in a thread pool, and the packed store
(:mod:`clipfood_assets.modeling.image_store`) reads ready tensors from memory-mapped shards.
Both return the same pixels for the same preprocessing signature.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import torch

LoadImage = Callable[[str], bytes]


@runtime_checkable
class ImageSource(Protocol):
    """uint8 images ``[n, 3, H, W]`` (CPU tensors, row i = keys[i]) by image key."""

    def prefetch(self, keys: Sequence[str]) -> None:
            """Start reading ``keys`` in the background (a hint; may do nothing)."""

    def get(self, keys: Sequence[str]) -> torch.Tensor:
        """uint8 ``[len(keys), 3, H, W]``; raises ValueError naming a key that cannot be read."""

    def forget(self, keys: Sequence[str]) -> None:
        """Images no longer needed (a hint: a single pass bounds its memory with it)."""

    def close(self) -> None:
        """Release threads, files and memory."""


class DecodedImages:
    """:class:`ImageSource` over encoded bytes: each image decoded once, in ``workers`` threads,
    in the order first asked for, and kept in memory until :meth:`forget` or :meth:`close`."""

    def __init__(self, load_image: LoadImage, preprocessor, workers: int) -> None:
        self._load = load_image
        self._preprocessor = preprocessor
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="clip-image")
        self._futures: dict[str, Future] = {}
        self._lock = threading.Lock()

    def _decode(self, key: str) -> torch.Tensor:
        try:
            return self._preprocessor.to_uint8(self._load(key))
        except Exception as exc:  # name the image: a bare PIL error says nothing about which
            raise ValueError(f"cannot read image {key!r}: {exc}") from exc

    def _future(self, key: str) -> Future:
        with self._lock:
            future = self._futures.get(key)
            if future is None:
                future = self._futures[key] = self._pool.submit(self._decode, key)
            return future

    def prefetch(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._future(key)

    def get(self, keys: Sequence[str]) -> torch.Tensor:
        futures = [self._future(k) for k in keys]
        return torch.stack([f.result() for f in futures])

    def forget(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._futures.pop(key, None)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()
