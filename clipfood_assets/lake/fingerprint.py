"""A compact fingerprint of the trusted zone: detects any added, changed or deleted object."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from clipfood_assets.lake.base import Lake, ObjectNotFound
from clipfood_assets.lake.layout import RECIPES_KEY, TRUSTED_IMAGES_PREFIX, TRUSTED_ZONE


@dataclass(frozen=True)
class ZoneFingerprint:
    recipes_etag: str | None
    images_digest: str
    n_images: int
    images_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def version(self) -> str:
        return hashlib.sha256(f"{self.recipes_etag}|{self.images_digest}".encode()).hexdigest()[:16]


def images_digest(lake: Lake, bucket: str = TRUSTED_ZONE, prefix: str = TRUSTED_IMAGES_PREFIX) -> tuple[str, int, int]:
    """sha256 over (key, ETag) of every object, streamed: constant memory for any zone size."""
    digest = hashlib.sha256()
    n = size = 0
    for obj in lake.list(bucket, prefix):
        digest.update(obj.key.encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
        digest.update(obj.etag.encode())
        digest.update(b"\n")
        n += 1
        size += obj.size
    return digest.hexdigest(), n, size


def fingerprint_trusted_zone(lake: Lake) -> ZoneFingerprint:
    try:
        recipes_etag = lake.stat(TRUSTED_ZONE, RECIPES_KEY).etag
    except ObjectNotFound:
        recipes_etag = None
    digest, n, size = images_digest(lake)
    return ZoneFingerprint(recipes_etag, digest, n, size)
