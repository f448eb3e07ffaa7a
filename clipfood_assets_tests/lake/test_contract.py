"""One contract for every lake backend: local directory, S3 server (moto), real MinIO when configured."""

from __future__ import annotations

import hashlib
import threading

import pytest

from clipfood_assets.lake import LakeError, ObjectNotFound, UnsafeKey
from clipfood_assets.lake.artifacts import Bundle, IncompleteArtifact, read_bundle, write_bundle


def test_put_get_stat_roundtrip(lake, bucket):
    info = lake.put_bytes(bucket, "datasets/a.csv", b"x,y\n1,2\n")
    assert info.size == 8 and info.etag
    assert lake.get_bytes(bucket, "datasets/a.csv") == b"x,y\n1,2\n"
    st = lake.stat(bucket, "datasets/a.csv")
    assert (st.size, st.etag) == (8, info.etag)
    assert lake.exists(bucket, "datasets/a.csv")
    assert not lake.exists(bucket, "datasets/b.csv")


def test_overwrite_changes_etag(lake, bucket):
    first = lake.put_bytes(bucket, "k.txt", b"one")
    second = lake.put_bytes(bucket, "k.txt", b"two!")
    assert lake.get_bytes(bucket, "k.txt") == b"two!"
    assert second.etag != first.etag


def test_the_etag_is_the_md5_of_the_bytes_and_moves_only_with_them(lake, bucket, tmp_path):
    # Same size, other bytes (a photo re-saved with another EXIF orientation): another identity.
    first, second = b"\xff\xd8 orientation 1" * 64, b"\xff\xd8 orientation 6" * 64
    put = lake.put_bytes(bucket, "images/a__r1_0.jpg", first)
    assert put.etag == hashlib.md5(first).hexdigest()  # what S3 gives a single-part upload
    changed = lake.put_bytes(bucket, "images/a__r1_0.jpg", second)
    assert changed.etag == hashlib.md5(second).hexdigest() != put.etag
    assert [(o.key, o.etag) for o in lake.list(bucket, "images/")] == [("images/a__r1_0.jpg", changed.etag)]
    # The same bytes again, from a file: the same identity as before (nothing but the bytes counts).
    (tmp_path / "a.jpg").write_bytes(first)
    assert lake.put_file(bucket, "images/a__r1_0.jpg", tmp_path / "a.jpg").etag == put.etag
    assert lake.stat(bucket, "images/a__r1_0.jpg").etag == put.etag


def test_missing_object_and_bucket_raise_not_found(lake, bucket):
    with pytest.raises(ObjectNotFound):
        lake.get_bytes(bucket, "nope.json")
    with pytest.raises(ObjectNotFound):
        lake.stat(bucket, "nope.json")
    assert list(lake.list(bucket)) == []


def test_list_is_recursive_sorted_and_prefix_filtered(lake, bucket):
    keys = ["images/b__r1_0.jpg", "images/a__r1_1.jpg", "images/sub/c.jpg", "images-x/d.jpg", "documents/r.jsonl"]
    for k in keys:
        lake.put_bytes(bucket, k, k.encode())
    listed = [o.key for o in lake.list(bucket, "images/")]
    assert listed == sorted(k for k in keys if k.startswith("images/"))
    assert [o.key for o in lake.list(bucket)] == sorted(keys)
    assert [o.key for o in lake.list(bucket, "images")] == sorted(k for k in keys if k.startswith("images"))
    sizes = {o.key: o.size for o in lake.list(bucket)}
    assert sizes["documents/r.jsonl"] == len("documents/r.jsonl")


def test_copy_is_server_side_and_keeps_content(lake, bucket):
    src = lake.put_bytes(bucket, "images/x__r_0.jpg", b"\xff\xd8jpeg")
    etag = lake.copy(bucket, "images/x__r_0.jpg", bucket + "-dst", "images/x__r_0.jpg")
    assert lake.get_bytes(bucket + "-dst", "images/x__r_0.jpg") == b"\xff\xd8jpeg"
    # An unchanged copy is recognisable from listings alone (idempotent image copy relies on this).
    assert etag == src.etag == lake.stat(bucket + "-dst", "images/x__r_0.jpg").etag
    with pytest.raises(ObjectNotFound):
        lake.copy(bucket, "images/missing.jpg", bucket + "-dst", "images/missing.jpg")


def test_delete_and_delete_prefix(lake, bucket):
    for k in ("run_a/x", "run_a/y/z", "run_b/x"):
        lake.put_bytes(bucket, k, b"1")
    lake.delete(bucket, "run_b/x")
    lake.delete(bucket, "run_b/x")  # idempotent
    assert not lake.exists(bucket, "run_b/x")
    assert lake.delete_prefix(bucket, "run_a/") == 2
    assert list(lake.list(bucket)) == []


def test_streaming_large_object_and_lines(lake, bucket, tmp_path):
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as fh:
        for i in range(60_000):
            fh.write(b'{"id": "%06d", "title": "Recipe number %d"}\n' % (i, i))
    size = big.stat().st_size
    assert size > 2_000_000
    info = lake.put_file(bucket, "documents/recipes.jsonl", big)
    assert info.size == size
    chunks = list(lake.iter_chunks(bucket, "documents/recipes.jsonl", chunk_size=1 << 16))
    assert b"".join(chunks) == big.read_bytes() and max(len(c) for c in chunks) <= 1 << 16
    out = lake.get_file(bucket, "documents/recipes.jsonl", tmp_path / "down" / "r.jsonl")
    assert out.read_bytes() == big.read_bytes()


@pytest.mark.parametrize(
    "key",
    ["../etc/passwd", "/abs/key", "a/../../b", "a\\b", "a//b", "nul\x00byte", "./x", ""],
)
def test_hostile_keys_are_refused(lake, bucket, key):
    with pytest.raises(UnsafeKey):
        lake.put_bytes(bucket, key, b"x")
    with pytest.raises(UnsafeKey):
        lake.get_bytes(bucket, key)


def test_unicode_and_spaces_in_keys_are_fine(lake, bucket):
    key = "images/crème brûlée__abc123_0.jpg"
    lake.put_bytes(bucket, key, b"img")
    assert [o.key for o in lake.list(bucket, "images/")] == [key]
    assert lake.get_bytes(bucket, key) == b"img"


def test_concurrent_writers_to_distinct_keys(lake, bucket):
    def write(i):
        lake.put_bytes(bucket, f"experiments/lora/run_{i % 2}/f{i}.json", b"{}")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(list(lake.list(bucket, "experiments/lora/run_0/"))) == 8
    assert len(list(lake.list(bucket, "experiments/lora/run_1/"))) == 8


def test_bundle_manifest_written_last_and_checked(lake, bucket, tmp_path):
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    (adapters / "adapter_model.safetensors").write_bytes(b"\x00" * 100)
    (adapters / "adapter_config.json").write_text("{}")
    import pandas as pd

    bundle = Bundle({"results.json": {"R@1": 0.5}, "table.csv": pd.DataFrame({"recipe_id": ["007", "7"], "label": [1, 2]}),
                     "config.yaml": {"lora": {"r": 8}}, "adapters": adapters})
    manifest = write_bundle(lake, bucket, "experiments/lora/run_x/", "lora_adapters", bundle)
    assert {f["name"] for f in manifest["files"]} == {
        "results.json", "table.csv", "config.yaml", "adapters/adapter_model.safetensors", "adapters/adapter_config.json"}
    stored = read_bundle(lake, bucket, "experiments/lora/run_x/", "lora_adapters")
    assert stored.read("results.json") == {"R@1": 0.5}
    assert stored.read("config.yaml") == {"lora": {"r": 8}}
    table = stored.read("table.csv")
    assert table["recipe_id"].tolist() == ["007", "7"] and table["label"].tolist() == [1, 2]
    dest = stored.download("adapters", tmp_path / "dl")
    assert (dest / "adapter_model.safetensors").read_bytes() == b"\x00" * 100

    # A file lost or truncated after the fact makes the artifact incomplete, never silently partial.
    lake.put_bytes(bucket, "experiments/lora/run_x/adapters/adapter_model.safetensors", b"\x00" * 10)
    with pytest.raises(IncompleteArtifact, match="manifest says 100"):
        read_bundle(lake, bucket, "experiments/lora/run_x/", "lora_adapters")
    # Files without a manifest (a writer that died before the end) are not an artifact.
    lake.put_bytes(bucket, "experiments/lora/run_y/results.json", b"{}")
    with pytest.raises(IncompleteArtifact, match="no manifest"):
        read_bundle(lake, bucket, "experiments/lora/run_y/", "lora_results")


def test_bundle_refuses_unknown_types(lake, bucket):
    with pytest.raises(TypeError, match="cannot store"):
        write_bundle(lake, bucket, "p/", "x", Bundle({"model.pkl": object()}))
    assert isinstance(LakeError("x"), RuntimeError)
