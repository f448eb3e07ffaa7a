"""The embedded lake: one directory per bucket on the local filesystem."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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


class LocalLake(Lake):
    """Same semantics as the S3 backend; writes are atomic (temp file + rename).

    The ETag is derived from size and modification time, which a copy preserves,
    so "unchanged since the last copy" is answered from a listing alone.
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
        st = path.stat()
        return ObjectInfo(bucket, key, st.st_size, f"{st.st_size:x}-{st.st_mtime_ns:x}", st.st_mtime)

    def _write_atomically(self, bucket: str, key: str, path: Path, write) -> None:
        """``write(tmp)`` fills a temp file beside ``path``, then one rename publishes it.

        On every failure (disk full, file-size limit, interrupt) the temp file is removed: a hidden file
        would keep its space and no listing or delete would ever see it. OSErrors become a LakeError
        naming the object and why ("disk full", "file too large").
        """
        tmp = path.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            for attempt in range(3):
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    write(tmp)
                    break
                except FileNotFoundError:
                    # A parallel delete removed the (then empty) folder between mkdir and write.
                    if attempt == 2 or path.parent.exists():
                        raise
            os.replace(tmp, path)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise LakeError(f"cannot write {self.uri(bucket, key)}: {os_error_reason(exc)} ({exc})") from exc
            raise

    def put_bytes(self, bucket, key, data, content_type=None):
        path = self._path(bucket, key)
        self._write_atomically(bucket, key, path, lambda tmp: tmp.write_bytes(bytes(data)))
        return self._info(bucket, key, path)

    def put_file(self, bucket, key, path, content_type=None):
        dst = self._path(bucket, key)
        self._write_atomically(bucket, key, dst, lambda tmp: shutil.copyfile(path, tmp))
        return self._info(bucket, key, dst)

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
        if not path.is_file():
            raise ObjectNotFound(f"no object {self.uri(bucket, key)}")
        return self._info(bucket, key, path)

    def list(self, bucket, prefix=""):
        validate_bucket(bucket)
        validate_prefix(prefix)
        base = self.root / bucket
        if not base.is_dir():
            return
        # Walk only the directory the prefix points into, in sorted order, lazily.
        head, _, _ = prefix.rpartition("/")
        start = base / head if head else base
        if not start.is_dir():
            return
        yield from self._walk(bucket, base, start, prefix)

    def _walk(self, bucket: str, base: Path, directory: Path, prefix: str) -> Iterator[ObjectInfo]:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        # Sort names as S3 sorts keys (a folder "a" as "a/"); names only, so a flat folder of
        # 100,000 images costs little memory.
        kinds = {}
        for name in names:
            if not name.startswith(_TMP_PREFIX):
                path = directory / name
                kinds[name + "/" if path.is_dir() and not path.is_symlink() else name] = path
        for sort_name in sorted(kinds):
            path = kinds[sort_name]
            rel = path.relative_to(base).as_posix()
            if sort_name.endswith("/"):
                if (rel + "/").startswith(prefix) or prefix.startswith(rel + "/"):
                    yield from self._walk(bucket, base, path, prefix)
                continue
            if not rel.startswith(prefix):
                continue
            try:
                st = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted while listing
            if stat.S_ISREG(st.st_mode):
                yield ObjectInfo(bucket, rel, st.st_size, f"{st.st_size:x}-{st.st_mtime_ns:x}", st.st_mtime)

    def copy(self, src_bucket, src_key, dst_bucket, dst_key):
        src = self._path(src_bucket, src_key)
        if not src.is_file():
            raise ObjectNotFound(f"no object {self.uri(src_bucket, src_key)}")
        dst = self._path(dst_bucket, dst_key)

        def write(tmp: Path) -> None:
            try:
                shutil.copy2(src, tmp)
            except FileNotFoundError as exc:
                if exc.filename == str(src):  # deleted since the check above
                    raise ObjectNotFound(f"no object {self.uri(src_bucket, src_key)}") from None
                raise

        self._write_atomically(dst_bucket, dst_key, dst, write)
        return self._info(dst_bucket, dst_key, dst).etag

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
