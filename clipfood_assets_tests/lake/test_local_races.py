"""The local lake under parallel deletes and writes that race on the same folders."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from clipfood_assets.lake import LocalLake, UnsafeKey


def test_delete_of_what_is_already_gone_is_success(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    lake.put_bytes("zone-a", "images/sub/x.jpg", b"1")
    lake.delete("zone-a", "images/sub/x.jpg")
    lake.delete("zone-a", "images/sub/x.jpg")  # object and its folders already gone
    lake.delete("zone-a", "never/was/there.jpg")
    lake.put_bytes("zone-a", "images/sub/y.jpg", b"2")
    lake.delete("zone-a", "images/sub")  # a folder is not an object
    assert [o.key for o in lake.list("zone-a")] == ["images/sub/y.jpg"]


def test_delete_survives_another_deleter_removing_the_folder_first(tmp_path, monkeypatch):
    lake = LocalLake(tmp_path / "lake")
    lake.put_bytes("zone-a", "images/a/b/x.jpg", b"1")
    original = Path.rmdir

    def raced(self):  # the other deleter wins every race: the folder is gone when we get there
        original(self)
        raise FileNotFoundError(2, "No such file or directory", str(self))

    monkeypatch.setattr(Path, "rmdir", raced)
    lake.delete("zone-a", "images/a/b/x.jpg")
    monkeypatch.undo()
    assert list(lake.list("zone-a")) == []


def test_parallel_deletes_and_writes_on_the_same_folders(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    doomed = [f"images/f{i % 7}/d{i:04d}.jpg" for i in range(700)]
    for key in doomed:
        lake.put_bytes("zone-a", key, b"x")
    kept = [f"images/f{i % 7}/k{i:04d}.jpg" for i in range(140)]
    start = threading.Barrier(2)

    def write_all() -> None:
        start.wait()
        for key in kept:
            lake.put_bytes("zone-a", key, b"keep")

    with ThreadPoolExecutor(8) as pool:
        writer = pool.submit(write_all)
        start.wait()
        deletes = [pool.submit(lake.delete, "zone-a", key) for key in doomed + doomed]
        for future in deletes + [writer]:
            future.result()  # raises if any delete or write lost a race
    assert sorted(o.key for o in lake.list("zone-a")) == sorted(kept)
    assert all(lake.get_bytes("zone-a", key) == b"keep" for key in kept)


def test_folder_marker_keys_cannot_be_files(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    for key in ("images/", "images/sub/"):
        with pytest.raises(UnsafeKey, match="ending in '/'"):
            lake.put_bytes("zone-a", key, b"")
    assert list(lake.list("zone-a")) == []


def test_parallel_deletes_of_the_same_keys_succeed_on_every_backend(lake, bucket):
    keys = [f"images/f{i % 3}/x{i}.jpg" for i in range(30)]
    for key in keys:
        lake.put_bytes(bucket, key, b"x")
    with ThreadPoolExecutor(6) as pool:
        for future in [pool.submit(lake.delete, bucket, key) for key in keys * 3]:
            future.result()
    assert list(lake.list(bucket)) == []
    lake.delete(bucket, keys[0])  # gone already: still success
