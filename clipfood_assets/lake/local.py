"""The embedded lake: one directory per bucket on the local filesystem."""

from __future__ import annotations

import errno
import hashlib
import heapq
import os
import stat
import struct
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import BinaryIO

from clipfood_assets.lake.base import (
    Lake,
    LakeError,
    ObjectInfo,
    ObjectNotFound,
    UnsafeKey,
    os_error_reason,
    validate_bucket,
    validate_key,
    validate_prefix,
)

_TMP_PREFIX = ".clipfood-tmp-"

# md5 digests of files by their identity on disk, shared by every LocalLake of the process:
# (st_dev << 64 | st_ino) -> packed (size, mtime_ns, ctime_ns) + 16-byte digest. ctime is the part that
# catches a rewrite keeping size and mtime (cp -p, rsync -t, tar -x): only the kernel sets it, on any
# write, rename or utime. Packed bytes keep an entry near 150 bytes (15 MB for 100,000 files).
_DIGESTS: dict[int, bytes] = {}
_STAMP = struct.Struct("<qqq")
_MAX_DIGESTS = 500_000  # then start over: memory stays bounded in a long-lived process with churn
# A file changed this recently may be changed again within one timestamp tick without its stamp
# moving (coarse clocks, NFS): its digest is returned but not remembered.
_RACY_S = 2.0


def _stamp(st: os.stat_result) -> bytes:
    return _STAMP.pack(st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _remember(st: os.stat_result, digest: bytes) -> None:
    if len(_DIGESTS) >= _MAX_DIGESTS:
        _DIGESTS.clear()
    _DIGESTS[st.st_dev << 64 | st.st_ino] = _stamp(st) + digest


def _md5():
    return hashlib.md5(usedforsecurity=False)  # an identity, as S3's ETag, not a security check


def _content_etag(path: Path | str, st: os.stat_result) -> tuple[str, os.stat_result]:
    """md5 hex of the file's bytes and the stat it belongs to; read only when the file's stamp moved.

    A file written to all along gets the digest of its last read, not remembered. Raises
    FileNotFoundError when the file is gone.
    """
    known = _DIGESTS.get(st.st_dev << 64 | st.st_ino)
    if known is not None and known[: _STAMP.size] == _stamp(st):
        return known[_STAMP.size :].hex(), st
    for _ in range(3):
        with open(path, "rb") as stream:
            before = os.fstat(stream.fileno())
            digest = hashlib.file_digest(stream, _md5).digest()
            after = os.fstat(stream.fileno())
        if _stamp(before) == _stamp(after):
            if time.time() - after.st_ctime > _RACY_S:
                _remember(after, digest)
            break
        # Written to while we read it: the digest may mix two versions, read it again.
    return digest.hex(), after


def _copy_hashing(src: Path, dst: Path, chunk_size: int = 1 << 20) -> bytes:
    """Copy src to dst (a new file) chunk by chunk; returns the md5 digest of the bytes copied."""
    digest = _md5()
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(chunk_size):
            digest.update(chunk)
            fout.write(chunk)
    return digest.digest()


class LocalLake(Lake):
    """Same semantics as the S3 backend; writes are atomic (temp file + rename).

    The ETag is the md5 hex of the object's bytes (what S3 gives a single-part upload), so it changes
    whenever the bytes do, even when size and modification time are kept, and a copy of the same
    bytes has the same ETag: "unchanged since the last copy" is answered from a listing alone. Digests
    are remembered per file by inode, size, mtime and ctime: a listing of an unchanged zone reads
    no file; the first one in a process reads every file it did not write itself.
    """

    def __init__(self, root: Path | str, stale_temp_s: float = 3600.0):
        """``stale_temp_s``: a temp file unchanged (ctime) this many seconds belongs to a writer that was
        killed; :meth:`delete_prefix` removes those under its prefix. A live writer changes its file all along.
        """
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.stale_temp_s = stale_temp_s

    def __repr__(self) -> str:
        return f"LocalLake({str(self.root)!r})"

    def _path(self, bucket: str, key: str) -> Path:
        validate_bucket(bucket)
        validate_key(key)
        if key.endswith("/"):
            # S3 folder markers ("images/") have no file equivalent: writing one would silently
            # create the object "images" instead.
            raise UnsafeKey(f"a key ending in '/' cannot be a file in the local lake: {key!r}")
        path = (self.root / bucket / key).resolve()
        # Belt and braces: symlinks inside the lake must not lead out of it either.
        if not path.is_relative_to(self.root / bucket):
            raise UnsafeKey(f"object key escapes bucket {bucket!r}: {key!r}")
        return path

    def _info(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        etag, st = _content_etag(path, path.stat())
        return ObjectInfo(bucket, key, st.st_size, etag, st.st_mtime)

    def _write_atomically(self, bucket: str, key: str, path: Path, write) -> ObjectInfo:
        """``write(tmp)`` fills a temp file beside ``path`` and returns the md5 digest of what it wrote,
        then one rename publishes it; returns the new object's info.

        On every failure (disk full, file-size limit, interrupt) the temp file is removed: a hidden file
        would keep its space and no listing or delete would ever see it. OSErrors become a LakeError
        naming the object and why ("disk full", "file too large").
        """
        tmp = path.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            for attempt in range(3):
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    digest = write(tmp)
                    break
                except FileNotFoundError:
                    # A parallel delete removed the (then empty) folder between mkdir and write.
                    if attempt == 2 or path.parent.exists():
                        raise
            written = os.stat(tmp)
            os.replace(tmp, path)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise LakeError(f"cannot write {self.uri(bucket, key)}: {os_error_reason(exc)} ({exc})") from exc
            raise
        # The digest of our own bytes is remembered, unless another writer's file already took the path.
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) == (
                written.st_dev, written.st_ino, written.st_size, written.st_mtime_ns):
            _remember(now, digest)
        return ObjectInfo(bucket, key, written.st_size, digest.hex(), written.st_mtime)

    def put_bytes(self, bucket, key, data, content_type=None):
        data = bytes(data)

        def write(tmp: Path) -> bytes:
            tmp.write_bytes(data)
            return hashlib.md5(data, usedforsecurity=False).digest()

        return self._write_atomically(bucket, key, self._path(bucket, key), write)

    def put_file(self, bucket, key, path, content_type=None):
        return self._write_atomically(bucket, key, self._path(bucket, key), lambda tmp: _copy_hashing(path, tmp))

    @contextmanager
    def open(self, bucket: str, key: str) -> Iterator[BinaryIO]:
        path = self._path(bucket, key)
        try:
            stream = open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object {self.uri(bucket, key)}") from None
        with stream:
            yield stream

    def stat(self, bucket, key):
        path = self._path(bucket, key)
        try:
            if path.is_file():
                return self._info(bucket, key, path)
        except FileNotFoundError:
            pass  # deleted since is_file()
        raise ObjectNotFound(f"no object {self.uri(bucket, key)}")

    def list(self, bucket, prefix="", *, start_after="", limit=None):
        validate_bucket(bucket)
        validate_prefix(prefix)
        if limit is not None and limit <= 0:
            return
        base = self.root / bucket
        if not base.is_dir():
            return
        # Walk only the directory the prefix points into, in sorted order, lazily.
        head, _, _ = prefix.rpartition("/")
        start = base / head if head else base
        if not start.is_dir():
            return
        objects = self._walk(str(start), head + "/" if head else "", bucket, prefix, start_after, limit)
        yield from islice(objects, limit)

    def _walk(self, directory: str, folder_key: str, bucket: str, prefix: str, after: str,
              limit: int | None) -> Iterator[ObjectInfo]:
        """Objects under prefix in ``directory``, whose keys start with ``folder_key`` ("" or "a/b/"), after
        the key ``after``. With a ``limit``, a directory's names are taken at most ``limit`` at a time."""
        # After's part in this directory: names up to it are skipped ("" when it sorts before the folder).
        rel = after[len(folder_key):] if after.startswith(folder_key) else ("" if after < folder_key else None)
        if rel is None:
            return  # the whole folder sorts before ``after``
        resumed = False
        while True:
            names = self._names(directory, rel, limit, into_folder=not resumed)
            for name in names:
                key = folder_key + name
                if name.endswith("/"):
                    if key.startswith(prefix) or prefix.startswith(key):
                        yield from self._walk(os.path.join(directory, name[:-1]), key, bucket, prefix, after, limit)
                    continue
                if not key.startswith(prefix):
                    continue
                path = os.path.join(directory, name)
                try:
                    st = os.stat(path, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        continue  # symlinks are not objects
                    etag, st = _content_etag(path, st)
                except FileNotFoundError:
                    continue  # deleted while listing
                yield ObjectInfo(bucket, key, st.st_size, etag, st.st_mtime)
            if limit is None or len(names) < limit:
                return
            # More names than one take: the next ones, strictly after the last (a folder's keys are all listed).
            rel, after, resumed = names[-1], "", True

    @staticmethod
    def _names(directory: str, after: str, limit: int | None, into_folder: bool) -> list[str]:
        """The directory's names after ``after`` in S3's key order (a folder "a" as "a/"), the first ``limit``.

        Names only, and with a limit at most that many held (a bounded heap, not a sorted copy of a flat
        folder of a million photos). The entry's type comes with it: no stat per name. ``into_folder``:
        a folder that ``after`` points into is kept, its later keys are listed.
        """
        try:
            with os.scandir(directory) as entries:
                # One generator, no layers: this runs once per entry of a folder that may hold millions.
                names = (n for e in entries if not e.name.startswith(_TMP_PREFIX)
                         and ((n := e.name + "/" if e.is_dir(follow_symlinks=False) else e.name) > after
                              or (into_folder and n.endswith("/") and after.startswith(n))))
                return sorted(names) if limit is None else heapq.nsmallest(limit, names)
        except FileNotFoundError:
            return []

    def copy(self, src_bucket, src_key, dst_bucket, dst_key):
        src = self._path(src_bucket, src_key)
        if not src.is_file():
            raise ObjectNotFound(f"no object {self.uri(src_bucket, src_key)}")
        dst = self._path(dst_bucket, dst_key)

        def write(tmp: Path) -> bytes:
            try:
                return _copy_hashing(src, tmp)
            except FileNotFoundError as exc:
                if exc.filename == str(src):  # deleted since the check above
                    raise ObjectNotFound(f"no object {self.uri(src_bucket, src_key)}") from None
                raise

        # Read once, hashed while copied: the copy's ETag is that of the bytes it holds.
        return self._write_atomically(dst_bucket, dst_key, dst, write).etag

    def delete(self, bucket, key):
        path = self._path(bucket, key)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            return  # a folder is not an object: there is nothing to delete
        self._remove_empty_folders(bucket, path.parent)

    def _remove_empty_folders(self, bucket: str, folder: Path) -> None:
        # Drop empty folders so listings and prefixes behave like S3's. Parallel deletes race
        # on the same folder and writers may refill it: gone or no longer empty both mean stop.
        while folder != self.root / bucket:
            try:
                folder.rmdir()
            except (FileNotFoundError, NotADirectoryError):
                break
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    break
                raise
            folder = folder.parent

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every object under prefix (returns how many), then the temp files of killed writers
        (unchanged for ``stale_temp_s``) in the folders wholly under it, and the folders left empty."""
        deleted = super().delete_prefix(bucket, prefix)
        self._sweep_stale_temp_files(bucket, prefix)
        return deleted

    def _sweep_stale_temp_files(self, bucket: str, prefix: str) -> None:
        base = self.root / bucket
        head, _, _ = prefix.rpartition("/")
        covered = []  # folders whose every key is under prefix, parents first
        for directory, subdirs, _ in os.walk(base / head if head else base):
            rel = Path(directory).relative_to(base).as_posix()
            rel = "" if rel == "." else rel + "/"
            if rel.startswith(prefix):
                covered.append(Path(directory))
            # Descend only where keys under prefix can be.
            subdirs[:] = [d for d in subdirs if (rel + d + "/").startswith(prefix) or prefix.startswith(rel + d + "/")]
        cutoff = time.time() - self.stale_temp_s
        for directory in reversed(covered):
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                if name.startswith(_TMP_PREFIX):
                    try:
                        if os.stat(directory / name, follow_symlinks=False).st_ctime < cutoff:
                            os.unlink(directory / name)
                    except FileNotFoundError:
                        pass  # its writer finished, or another sweep was first
            self._remove_empty_folders(bucket, directory)

    def uri(self, bucket, key=""):
        return (self.root / bucket / key).as_uri() if key else (self.root / bucket).as_uri()
