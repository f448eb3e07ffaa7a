"""Listing resumes after a key and stops at a limit, on every backend: the pages a sensor walks across ticks."""

from __future__ import annotations

import pytest

KEYS = sorted([
    "documents/r.jsonl", "images/a__r1_0.jpg", "images/a__r1_1.jpg", "images/b c__r2_0.jpg", "images/café__r3_0.jpg",
    "images/sub/c__r4_0.jpg", "images/sub/d__r4_1.jpg", "images/sub/deeper/e__r5_0.jpg", "images/z__r6_0.jpg",
    "images-x/f.jpg",
])


@pytest.fixture
def filled(lake, bucket):
    for key in KEYS:
        lake.put_bytes(bucket, key, key.encode())
    return lake, bucket


def _keys(lake, bucket, prefix="", **kwargs):
    return [o.key for o in lake.list(bucket, prefix, **kwargs)]


def test_start_after_lists_the_keys_after_it_in_order(filled):
    lake, bucket = filled
    images = [k for k in KEYS if k.startswith("images/")]
    for i, after in enumerate(images):
        assert _keys(lake, bucket, "images/", start_after=after) == images[i + 1:], after
    # A key that is not an object, inside a folder, before and after everything.
    assert _keys(lake, bucket, "images/", start_after="images/sub/c") == images[images.index("images/sub/c__r4_0.jpg"):]
    assert _keys(lake, bucket, "images/", start_after="images/sub/") == [k for k in images if k > "images/sub/"]
    assert _keys(lake, bucket, "images/", start_after="images/sub0") == ["images/z__r6_0.jpg"]
    assert _keys(lake, bucket, "images/", start_after="a") == images
    assert _keys(lake, bucket, "images/", start_after="zzz") == []
    assert _keys(lake, bucket, start_after="images/z__r6_0.jpg") == []  # "images-x/" sorts before "images/"
    assert _keys(lake, bucket, start_after="images/sub/deeper/e__r5_0.jpg") == [
        k for k in KEYS if k > "images/sub/deeper/e__r5_0.jpg"]


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 100])
def test_pages_of_a_limit_resumed_after_their_last_key_list_everything_once(filled, limit):
    lake, bucket = filled
    pages, after = [], ""
    while page := _keys(lake, bucket, "images/", start_after=after, limit=limit):
        assert len(page) <= limit
        pages.append(page)
        after = page[-1]
    assert [k for page in pages for k in page] == [k for k in KEYS if k.startswith("images/")]
    assert all(len(page) == limit for page in pages[:-1])


def test_a_limit_of_zero_lists_nothing_and_no_limit_lists_all(filled):
    lake, bucket = filled
    assert _keys(lake, bucket, limit=0) == []
    assert _keys(lake, bucket, limit=None) == KEYS


def test_local_folders_without_objects_do_not_shorten_a_page(local_lake):
    # Empty folders and symlinks are names in a directory, not objects: a page still holds `limit` objects.
    import os

    bucket = "pages"
    for i in range(6):
        local_lake.put_bytes(bucket, f"images/{i}.jpg", b"x")
    root = local_lake.root / bucket / "images"
    for name in ("0a", "1a", "2a"):
        (root / name).mkdir()
        os.symlink(root / "0.jpg", root / f"{name}.jpg")
    page = _keys(local_lake, bucket, "images/", limit=2)
    assert page == ["images/0.jpg", "images/1.jpg"]
    assert _keys(local_lake, bucket, "images/", start_after=page[-1], limit=3) == [
        "images/2.jpg", "images/3.jpg", "images/4.jpg"]
