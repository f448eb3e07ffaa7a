"""The one storage interface everything uses: buckets of objects addressed by key."""

from __future__ import annotations

import errno
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

MAX_KEY_LENGTH = 1024
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class LakeError(RuntimeError):
    """A storage operation failed; the message names the object."""


# Lack of space, said in words: the errno alone ("[Errno 27]") does not tell an operator what to free.
_NO_SPACE = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk full (quota exceeded)", errno.EFBIG: "file too large"}


def os_error_reason(exc: OSError) -> str:
    """Why a filesystem write failed, in words: "disk full", "file too large", else the OS's message."""
    return _NO_SPACE.get(exc.errno, exc.strerror or str(exc))


class ObjectNotFound(LakeError, KeyError):
    """The bucket or the object does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "object not found"


class UnsafeKey(LakeError, ValueError):
    """A key that could escape its bucket or confuse a filesystem."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unsafe key"


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    size: int
    etag: str
    last_modified: float | None = None  # seconds since the epoch


# The Content-Type of what the platform writes, by suffix, so that MinIO's console and browsers show each
# object as what it is. safetensors and numpy arrays have no registered type: octet-stream is theirs.
_CONTENT_TYPES = {
    ".csv": "text/csv",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".md": "text/markdown",
    ".txt": "text/plain",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
}


def object_content_type(key: str, given: str | None = None) -> str:
    """The Content-Type an object is stored with: ``given``, else the one its key's suffix names, else
    ``application/octet-stream``; text types say UTF-8 (all text the platform writes is)."""
    ctype = given or _CONTENT_TYPES.get(PurePosixPath(key).suffix.lower(), "application/octet-stream")
    if ctype.startswith("text/") and "charset=" not in ctype:
        ctype += "; charset=utf-8"
    return ctype


def validate_key(key: str) -> str:
    """Refuse keys that are absolute, climb out with `..`, or carry control characters.

    Keys come from data (trusted-zone listings, CSV rows), so they are checked
    before any backend turns them into a path or a URL.
    """
    if not isinstance(key, str) or not key:
        raise UnsafeKey(f"empty or non-string object key: {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise UnsafeKey(f"object key longer than {MAX_KEY_LENGTH} characters: {key[:80]!r}…")
    if key.startswith("/") or "\\" in key or _CONTROL_CHARS.search(key):
        raise UnsafeKey(f"unsafe object key (absolute, backslash or control character): {key!r}")
    parts = key.split("/")
    if any(p in ("..", ".") for p in parts) or "" in parts[:-1]:
        raise UnsafeKey(f"unsafe object key (`..`, `.` or empty segment): {key!r}")
    return key


def validate_prefix(prefix: str) -> str:
    return validate_key(prefix.rstrip("/") + "/x")[:-1] if prefix else ""


_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def validate_bucket(bucket: str) -> str:
    if not isinstance(bucket, str) or not _BUCKET_NAME.match(bucket) or ".." in bucket:
        raise UnsafeKey(f"invalid bucket name: {bucket!r}")
    return bucket


class Lake(ABC):
    """Object storage with S3 semantics. Zones are buckets; keys are validated.

    Objects are stored with a Content-Type (:func:`object_content_type`: the one given, else by the key's
    suffix) where the backend keeps one: S3 does, a local folder does not (file servers go by the
    same suffixes).
    """

    @abstractmethod
    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo: ...

    @abstractmethod
    def put_file(self, bucket: str, key: str, path: Path, content_type: str | None = None) -> ObjectInfo:
        """Upload a local file without reading it whole into memory."""

    @abstractmethod
    @contextmanager
    def open(self, bucket: str, key: str) -> Iterator[BinaryIO]:
        """Stream an object (raises ObjectNotFound)."""

    @abstractmethod
    def stat(self, bucket: str, key: str) -> ObjectInfo:
        """Size and ETag of an object (raises ObjectNotFound)."""

    @abstractmethod
    def list(self, bucket: str, prefix: str = "", *, start_after: str = "",
             limit: int | None = None) -> Iterator[ObjectInfo]:
        """Every object under prefix, recursively, in key order, streamed page by page.

        ``start_after``: only keys after it (S3's StartAfter), so a listing can resume where an earlier
        one stopped; ``limit``: at most this many objects (memory and requests stay bounded by it).
        """

    @abstractmethod
    def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str) -> str:
        """Server-side copy (the bytes never pass through this process), with the Content-Type of ``dst_key``;
        returns the new ETag."""

    @abstractmethod
    def delete(self, bucket: str, key: str) -> None:
        """Remove an object; a missing one is not an error."""

    @abstractmethod
    def uri(self, bucket: str, key: str = "") -> str: ...

    # Conveniences shared by every backend.

    def get_bytes(self, bucket: str, key: str) -> bytes:
        with self.open(bucket, key) as stream:
            return stream.read()

    def get_file(self, bucket: str, key: str, path: Path, chunk_size: int = 1 << 20) -> Path:
        """Download an object to ``path``, whole or not at all: on any failure its partial copy is removed.

        Raises ObjectNotFound, or LakeError naming the object and why (e.g. "disk full") when the local
        write fails.
        """
        path = Path(path)
        # A name of its own: two downloads to one path must not write into the same partial file.
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self.open(bucket, key) as stream, open(tmp, "wb") as out:
                while chunk := stream.read(chunk_size):
                    out.write(chunk)
            tmp.replace(path)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise LakeError(f"cannot download {self.uri(bucket, key)} to {path}: {os_error_reason(exc)}") from exc
            raise
        return path

    def iter_chunks(self, bucket: str, key: str, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        """An object as a stream of chunks: memory stays bounded whatever its size."""
        with self.open(bucket, key) as stream:
            while chunk := stream.read(chunk_size):
                yield chunk

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.stat(bucket, key)
            return True
        except ObjectNotFound:
            return False

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        keys = [o.key for o in self.list(bucket, prefix)]
        for key in keys:
            self.delete(bucket, key)
        return len(keys)
