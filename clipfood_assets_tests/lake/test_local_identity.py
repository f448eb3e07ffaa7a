"""The local lake's ETag is the md5 of the bytes: it moves with them, also when size and mtime are kept.

Rewrites keep the old size and modification time as `cp -p` and `tar -x` do (the real tools), or
as a script does with os.utime; the digests a process remembers must not hide any of them, and
must spare the reads of an unchanged zone (counted in /proc/self/io).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from clipfood_assets.lake import LocalLake

OLD, NEW = b"\xff\xd8 photo, EXIF orientation 1" * 100, b"\xff\xd8 photo, EXIF orientation 6" * 100
KEY = "images/soup__aaaaaaaaaa_0.jpg"


def _settle() -> None:
    # Digests of files changed in the last 2 s are not remembered (a write may still land in the same
    # timestamp tick); a real zone's files are older than that.
    time.sleep(2.1)


def _rewrite_keeping_size_and_mtime(how: str, photo: Path, tmp_path: Path) -> None:
    old = photo.stat()
    source = tmp_path / "new.jpg"
    source.write_bytes(NEW)
    os.utime(source, ns=(old.st_atime_ns, old.st_mtime_ns))
    if how == "cp -p":  # overwrites in place: same inode
        subprocess.run(["cp", "-p", str(source), str(photo)], check=True)
    elif how == "tar -x":  # GNU tar replaces the file: a new inode
        archive = tmp_path / "photo.tar"
        with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tar:
            tar.add(source, arcname=photo.name)
        subprocess.run(["tar", "-xf", str(archive), "-C", str(photo.parent)], check=True)
    else:  # a script re-saving the photo in place, then putting the mtime back
        with open(photo, "r+b") as stream:
            stream.write(NEW)
        os.utime(photo, ns=(old.st_atime_ns, old.st_mtime_ns))
    now = photo.stat()
    assert (now.st_size, now.st_mtime_ns) == (old.st_size, old.st_mtime_ns), "the rewrite must keep size and mtime"


@pytest.mark.parametrize("how", ["cp -p", "tar -x", "os.utime"])
def test_a_same_size_rewrite_with_its_mtime_kept_changes_the_etag(tmp_path, how):
    if how != "os.utime" and not shutil.which(how.split()[0]):
        pytest.skip(f"no {how.split()[0]} here")
    lake = LocalLake(tmp_path / "lake")
    lake.put_bytes("trusted-zone", KEY, OLD)
    # A whole-second mtime, as an earlier extraction gives it: a tar header holds no finer one.
    os.utime(lake.root / "trusted-zone" / KEY, (1_700_000_000, 1_700_000_000))
    _settle()
    before = [(o.key, o.etag) for o in lake.list("trusted-zone")]  # remembered now
    assert before == [(KEY, hashlib.md5(OLD).hexdigest())]

    _rewrite_keeping_size_and_mtime(how, lake.root / "trusted-zone" / KEY, tmp_path)

    new_etag = hashlib.md5(NEW).hexdigest()
    assert [(o.key, o.etag) for o in lake.list("trusted-zone")] == [(KEY, new_etag)]
    assert lake.stat("trusted-zone", KEY).etag == new_etag
    # Another process (another LocalLake, nothing remembered of this one's) agrees.
    assert LocalLake(tmp_path / "lake").stat("trusted-zone", KEY).etag == new_etag


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux's /proc/self/io to count reads")
def test_an_unchanged_zone_is_listed_without_reading_its_files(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    folder = lake.root / "trusted-zone" / "images"
    folder.mkdir(parents=True)
    size, n = 64 * 1024, 20
    for i in range(n):  # written by another tool: nothing known of them
        (folder / f"dish-{i:02d}__r{i:03d}_0.jpg").write_bytes(bytes([i]) * size)

    def listing_reads() -> tuple[int, dict[str, str]]:
        start = _bytes_read()
        etags = {o.key: o.etag for o in lake.list("trusted-zone")}
        return _bytes_read() - start, etags

    read, first = listing_reads()
    assert read >= n * size and len(first) == n
    read, _ = listing_reads()
    assert read >= n * size, "files changed within the racy window must be read again"
    _settle()
    read, settled = listing_reads()
    assert read >= n * size and settled == first
    read, again = listing_reads()
    assert read < size and again == first, f"an unchanged zone was read again ({read} bytes)"

    # One photo rewritten in place with its size and mtime kept: only that one is read.
    _rewrite_keeping_size_and_mtime("os.utime", folder / "dish-03__r003_0.jpg", tmp_path)
    read, changed = listing_reads()
    assert size <= read < 2 * size
    assert {k for k in first if changed[k] != first[k]} == {"images/dish-03__r003_0.jpg"}


def test_own_writes_and_copies_are_known_without_reading_them_back(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    source = tmp_path / "photo.jpg"
    source.write_bytes(OLD)
    put = lake.put_file("trusted-zone", KEY, source)
    copied = lake.copy("trusted-zone", KEY, "fine-tuning-zone", KEY)
    assert put.etag == copied == hashlib.md5(OLD).hexdigest()
    if os.path.exists("/proc/self/io"):
        start = _bytes_read()
        listed = [o.etag for o in lake.list("trusted-zone")] + [o.etag for o in lake.list("fine-tuning-zone")]
        assert _bytes_read() - start < len(OLD)
        assert listed == [put.etag, put.etag]
