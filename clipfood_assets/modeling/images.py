"""Where training and evaluation get their pixels: preprocessed uint8 images by image key.

Two sources satisfy :class:`ImageSource`: :class:`DecodedImages` decodes encoded bytes
(JPEG/PNG from the lake) in a thread pool, and the packed store
(:mod:`clipfood_assets.modeling.image_store`) reads ready tensors from memory-mapped shards.
Both return the same pixels for the same preprocessing signature.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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

    def close(self) -> None:
        """Release threads, files and memory."""


class DecodedImages:
    """:class:`ImageSource` over encoded bytes: each image decoded once, in ``workers`` threads,
    in the order first asked for, and kept in memory until :meth:`close`."""

    def __init__(self, load_image: LoadImage, preprocessor, workers: int) -> None:
        self._load = load_image
        self._preprocessor = preprocessor
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="clip-image")
        self._futures: dict[str, Future] = {}

    def _decode(self, key: str) -> torch.Tensor:
        try:
            return self._preprocessor.to_uint8(self._load(key))
        except Exception as exc:  # name the image: a bare PIL error says nothing about which
            raise ValueError(f"cannot read image {key!r}: {exc}") from exc

    def prefetch(self, keys: Sequence[str]) -> None:
        for key in keys:
            if key not in self._futures:
                self._futures[key] = self._pool.submit(self._decode, key)

    def get(self, keys: Sequence[str]) -> torch.Tensor:
        self.prefetch(keys)
        return torch.stack([self._futures[k].result() for k in keys])

    def forget(self, keys: Sequence[str]) -> None:
        """Drop decoded images no longer needed (bounds memory in a single pass)."""
        for key in keys:
            self._futures.pop(key, None)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()
