"""A compact fingerprint of the trusted zone: detects any added, changed or deleted object.

The images' digest does not depend on where a listing pauses: it is the sum (mod 2**256) of one
sha256 per (key, ETag), an order-independent multiset hash. A listing can stop after any key and
go on later, in another sensor tick or another process, from four numbers and the last key (an
:class:`ImagesPass`), and ends with exactly the digest one uninterrupted listing gives. It is an
identity for change detection, not a security check.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass

from clipfood_assets.lake.base import Lake, ObjectInfo, ObjectNotFound
from clipfood_assets.lake.layout import RECIPES_KEY, TRUSTED_IMAGES_PREFIX, TRUSTED_ZONE

_MODULUS = 1 << 256
# Names the digest's construction: a sum of per-object hashes since #20 (a chained sha256 before).
_DIGEST_FORMAT = b"clipfood-images-sum-v2\0"


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


@dataclass
class ImagesPass:
    """A listing of the zone's images under way: where it is and what it has folded in so far.

    Plain data (``to_dict``/``from_dict``), so it survives between sensor ticks in a cursor of ~200
    bytes, whatever the zone's size.
    """

    after: str = ""  # the last key folded in; the listing resumes after it
    total: int = 0  # sum of the per-object hashes (reduced mod 2**256 when stored)
    n: int = 0
    size: int = 0

    def add(self, obj: ObjectInfo) -> None:
        item = obj.key.encode("utf-8", "surrogateescape") + b"\0" + obj.etag.encode()
        self.total += int.from_bytes(hashlib.sha256(item).digest(), "big")
        self.n += 1
        self.size += obj.size
        self.after = obj.key

    def advance(self, lake: Lake, limit: int | None = None, seconds: float | None = None,
                bucket: str = TRUSTED_ZONE, prefix: str = TRUSTED_IMAGES_PREFIX) -> bool:
        """Fold in the objects after ``after``: at most ``limit``, for about ``seconds``. True when the
        listing reached the end of the zone.

        The time counts from the call, but at least half of it is left for listing after the first object:
        a listing that is slow to start (the local lake scans a folder whole before it yields, a million
        photos in a second or more) still moves the pass on by a useful share.
        """
        listed, start, stop = 0, time.monotonic(), None
        for obj in lake.list(bucket, prefix, start_after=self.after, limit=limit):
            if seconds is not None and stop is None:
                stop = max(start + seconds, time.monotonic() + seconds / 2)
            self.add(obj)
            listed += 1
            if stop is not None and time.monotonic() >= stop:
                return False  # the next call finds out whether anything is left
        return limit is None or listed < limit

    @property
    def digest(self) -> str:
        return hashlib.sha256(_DIGEST_FORMAT + (self.total % _MODULUS).to_bytes(32, "big")
                              + self.n.to_bytes(8, "big")).hexdigest()

    def to_dict(self) -> dict:
        return {"after": self.after, "sum": f"{self.total % _MODULUS:064x}", "n": self.n, "bytes": self.size}

    @classmethod
    def from_dict(cls, data: dict) -> ImagesPass:
        return cls(after=data["after"], total=int(data["sum"], 16), n=data["n"], size=data["bytes"])


def images_digest(lake: Lake, bucket: str = TRUSTED_ZONE, prefix: str = TRUSTED_IMAGES_PREFIX) -> tuple[str, int, int]:
    """The digest over (key, ETag) of every object, with their count and bytes; streamed: constant memory."""
    listing = ImagesPass()
    listing.advance(lake, bucket=bucket, prefix=prefix)
    return listing.digest, listing.n, listing.size


def recipes_etag(lake: Lake) -> str | None:
    try:
        return lake.stat(TRUSTED_ZONE, RECIPES_KEY).etag
    except ObjectNotFound:
        return None


def fingerprint_trusted_zone(lake: Lake) -> ZoneFingerprint:
    etag = recipes_etag(lake)
    digest, n, size = images_digest(lake)
    return ZoneFingerprint(etag, digest, n, size)
