"""Backend-specific promises: local lake cannot be escaped, env selects the backend, S3 faults are bounded."""

from __future__ import annotations

import os
import time

import pytest

from clipfood_assets.lake import LakeError, LocalLake, S3Lake, UnsafeKey, lake_from_env


def test_local_lake_cannot_be_escaped_through_a_symlink(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    outside = tmp_path / "outside"
    outside.mkdir()
    lake.put_bytes("zone-a", "ok.txt", b"1")
    os.symlink(outside, tmp_path / "lake" / "zone-a" / "link")
    with pytest.raises(UnsafeKey, match="escapes"):
        lake.put_bytes("zone-a", "link/evil.txt", b"x")
    assert not (outside / "evil.txt").exists()


def test_local_writes_are_atomic_and_temp_files_never_listed(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    lake.put_bytes("zone-a", "d/x.bin", b"a" * 10)
    # A writer that died mid-write leaves a temp file; it is not an object.
    (tmp_path / "lake" / "zone-a" / "d" / ".clipfood-tmp-deadbeef").write_bytes(b"partial")
    assert [o.key for o in lake.list("zone-a")] == ["d/x.bin"]


def test_invalid_bucket_names_are_refused(tmp_path):
    lake = LocalLake(tmp_path)
    for bad in ("..", "a", "UPPER", "../x", "a/b"):
        with pytest.raises(UnsafeKey):
            lake.put_bytes(bad, "k", b"x")


def test_env_selects_backend_and_accepts_seed_aliases(tmp_path):
    local = lake_from_env({"CLIPFOOD_LAKE_DIR": str(tmp_path / "l")})
    assert isinstance(local, LocalLake) and local.root == (tmp_path / "l").resolve()
    s3 = lake_from_env({"MINIO_ENDPOINT": "http://127.0.0.1:9000", "MINIO_USER": "u", "MINIO_PASSWORD": "p"})
    assert isinstance(s3, S3Lake) and s3.endpoint == "127.0.0.1:9000" and not s3.secure
    assert "p" not in repr(s3) and "u'" not in repr(s3)
    secure = lake_from_env({"MINIO_ENDPOINT": "https://minio.example:9000", "MINIO_ACCESS_KEY": "a",
                            "MINIO_SECRET_KEY": "b"})
    assert secure.secure
    with pytest.raises(LakeError, match="credentials are missing"):
        lake_from_env({"MINIO_ENDPOINT": "127.0.0.1:9000"})


def test_s3_unreachable_fails_clearly_after_bounded_retries():
    # Nothing listens on port 9 of loopback; the error names the object and the endpoint.
    lake = S3Lake("127.0.0.1:9", "a", "b", retries=2, backoff=0.01, timeout=1)
    start = time.monotonic()
    with pytest.raises(LakeError, match=r"trusted-zone.*127\.0\.0\.1:9"):
        lake.get_bytes("trusted-zone", "documents/recipes.jsonl")
    assert time.monotonic() - start < 20


def test_s3_server_stopped_then_restarted(s3_server, s3_lake):
    s3_lake.put_bytes("fine-tuning-zone", "datasets/a.csv", b"a\n1\n")
    s3_server.stop()
    try:
        with pytest.raises(LakeError):
            s3_lake.put_bytes("fine-tuning-zone", "datasets/b.csv", b"b\n2\n")
    finally:
        s3_server.restart()
    # After the fault the same client completes the write and earlier data is intact.
    s3_lake.put_bytes("fine-tuning-zone", "datasets/b.csv", b"b\n2\n")
    assert s3_lake.get_bytes("fine-tuning-zone", "datasets/a.csv") == b"a\n1\n"
    assert s3_lake.get_bytes("fine-tuning-zone", "datasets/b.csv") == b"b\n2\n"


@pytest.mark.minio
@pytest.mark.skipif(not os.environ.get("MINIO_ENDPOINT"), reason="needs a real MinIO (MINIO_ENDPOINT)")
def test_real_minio_rejects_wrong_credentials():
    env = dict(os.environ, MINIO_ACCESS_KEY="wrong", MINIO_SECRET_KEY="wrong-secret")
    env.pop("MINIO_USER", None)
    env.pop("MINIO_PASSWORD", None)
    with pytest.raises(LakeError):
        lake_from_env(env).put_bytes("fine-tuning-zone", "x", b"1")
