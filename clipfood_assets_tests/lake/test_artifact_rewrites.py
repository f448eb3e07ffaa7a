"""A rewrite of an existing artifact is never read as complete until it is: whole old or whole new.

The rewrites keep every file's size (a metric 0.25 -> 0.75, adapter weights of a fixed shape), so
sizes alone cannot tell the versions apart. The kill is real: a child process writing the new
version SIGKILLs itself once its first file has landed, on the local lake and on the S3 server.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clipfood_assets.lake import LocalLake
from clipfood_assets.lake.artifacts import Bundle, IncompleteArtifact, encode, manifest_key, read_bundle, write_bundle

PREFIX, ARTIFACT = "experiments/baseline/", "baseline_results"


def _version(folder: Path, r1: float, photo: str, weight: int) -> Bundle:
    adapters = folder / "adapters"
    adapters.mkdir(parents=True)
    (adapters / "adapter_model.safetensors").write_bytes(bytes([weight]) * 4096)
    return Bundle({"results_baseline.json": {"R@1": r1, "R@5": 0.5},
                   "examples_top5.json": [{"query": "Tomato Soup", "top5": [photo]}],
                   "adapters": adapters})


@pytest.fixture
def versions(tmp_path):
    old = _version(tmp_path / "old", 0.25, "images/a__r1_0.jpg", 1)
    new = _version(tmp_path / "new", 0.75, "images/b__r1_0.jpg", 2)
    for name in ("results_baseline.json", "examples_top5.json"):
        sizes = {len(encode(name, v.files[name])[0]) for v in (old, new)}
        assert len(sizes) == 1, f"the versions' {name} must have the same size"
    return old, new


# argv: lake spec (JSON), bucket, folder of the new version. SIGKILLs itself after the first upload.
_KILLED_WRITER = r"""
import json, os, signal, sys
from pathlib import Path
from clipfood_assets.lake import LocalLake, S3Lake
from clipfood_assets.lake.artifacts import Bundle, write_bundle

spec, bucket, folder = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
lake = (LocalLake(spec["root"]) if "root" in spec else
        S3Lake(spec["endpoint"], "testing", "testing", secure=False, retries=0, timeout=5))
put_bytes = lake.put_bytes

def put_then_die(*args, **kwargs):
    info = put_bytes(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # a worker killed after the first file

lake.put_bytes = put_then_die
files = {"results_baseline.json": {"R@1": 0.75, "R@5": 0.5},
         "examples_top5.json": [{"query": "Tomato Soup", "top5": ["images/b__r1_0.jpg"]}],
         "adapters": folder / "adapters"}
write_bundle(lake, bucket, "experiments/baseline/", "baseline_results", Bundle(files))
"""


def test_a_rewrite_killed_after_its_first_file_is_not_read_as_complete(lake, bucket, versions, tmp_path):
    old, new = versions
    write_bundle(lake, bucket, PREFIX, ARTIFACT, old)
    held = read_bundle(lake, bucket, PREFIX, ARTIFACT)  # a reader that opened the old version

    spec = {"root": str(lake.root)} if isinstance(lake, LocalLake) else {"endpoint": lake.endpoint}
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, json.dumps(spec), bucket, str(tmp_path / "new")],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    # The new results landed beside the old examples and adapters, all of the old sizes.
    assert json.loads(lake.get_bytes(bucket, PREFIX + "results_baseline.json"))["R@1"] == 0.75
    assert b"a__r1_0" in lake.get_bytes(bucket, PREFIX + "examples_top5.json")

    with pytest.raises(IncompleteArtifact, match=f"{ARTIFACT} .*no manifest"):
        read_bundle(lake, bucket, PREFIX, ARTIFACT)
    with pytest.raises(IncompleteArtifact, match=r"results_baseline\.json is not the file its manifest records"):
        held.read("results_baseline.json")
    assert held.read("examples_top5.json")[0]["top5"] == ["images/a__r1_0.jpg"]  # still whole old

    write_bundle(lake, bucket, PREFIX, ARTIFACT, new)  # the asset materialized again
    stored = read_bundle(lake, bucket, PREFIX, ARTIFACT)
    assert stored.read("results_baseline.json")["R@1"] == 0.75
    assert stored.read("examples_top5.json")[0]["top5"] == ["images/b__r1_0.jpg"]
    adapters = stored.download("adapters", tmp_path / "dl")
    assert (adapters / "adapter_model.safetensors").read_bytes() == bytes([2]) * 4096


def test_an_old_manifest_never_vouches_for_a_same_size_file_written_since(lake, bucket, versions, tmp_path):
    # What a writer that kept the old manifest (or raced another writer) would leave: old manifest, one new file.
    old, new = versions
    write_bundle(lake, bucket, PREFIX, ARTIFACT, old)
    held = read_bundle(lake, bucket, PREFIX, ARTIFACT)
    lake.put_file(bucket, PREFIX + "adapters/adapter_model.safetensors",
                  new.files["adapters"] / "adapter_model.safetensors")

    with pytest.raises(IncompleteArtifact, match=r"baseline_results: .*adapter_model\.safetensors is not the file"):
        read_bundle(lake, bucket, PREFIX, ARTIFACT)
    dest = tmp_path / "dl"
    with pytest.raises(IncompleteArtifact, match=r"adapter_model\.safetensors"):
        held.download("adapters", dest)
    assert not (dest / "adapter_model.safetensors").exists(), "the mismatching file was left for a loader"


def test_a_file_whose_etag_differs_but_bytes_match_is_accepted(lake, bucket, versions):
    # A lake copied to another server may give the same bytes other ETags (multipart part sizes, encryption).
    old, _ = versions
    manifest = write_bundle(lake, bucket, PREFIX, ARTIFACT, old)
    for entry in manifest["files"]:
        entry["etag"] = "0" * 32 + "-3"
    lake.put_bytes(bucket, manifest_key(PREFIX, ARTIFACT), json.dumps(manifest).encode())
    assert read_bundle(lake, bucket, PREFIX, ARTIFACT).read("results_baseline.json")["R@1"] == 0.25
    lake.put_bytes(bucket, PREFIX + "results_baseline.json", encode("results_baseline.json", {"R@1": 0.99, "R@5": 0.5})[0])
    with pytest.raises(IncompleteArtifact, match=r"results_baseline\.json is not the file"):
        read_bundle(lake, bucket, PREFIX, ARTIFACT)


def test_a_manifest_from_before_content_hashes_is_checked_by_size(lake, bucket, versions):
    old, _ = versions
    manifest = write_bundle(lake, bucket, PREFIX, ARTIFACT, old)
    for entry in manifest["files"]:
        del entry["sha256"]
        entry["etag"] = "1f-18b2c0a1e3d4"  # the local lake's former size-mtime ETag
    lake.put_bytes(bucket, manifest_key(PREFIX, ARTIFACT), json.dumps(manifest).encode())
    stored = read_bundle(lake, bucket, PREFIX, ARTIFACT)  # still readable: no run is lost to the upgrade
    assert stored.read("results_baseline.json")["R@1"] == 0.25
    lake.put_bytes(bucket, PREFIX + "examples_top5.json", b"[]")
    with pytest.raises(IncompleteArtifact, match="manifest says"):
        read_bundle(lake, bucket, PREFIX, ARTIFACT)
