"""Writes that fail for lack of space leave no hidden temp file and say which object and why.

The failures are real: a file-size limit (RLIMIT_FSIZE, so EFBIG) and a full 256 KiB tmpfs
(ENOSPC), each in a child process so that the limit or the mount stays there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clipfood_assets.lake import LocalLake

LIMIT = 64 * 1024  # the child's file-size limit, bytes
BIG = 4 * LIMIT

# argv: lake spec (JSON), operation, download folder. Prints {"error": ..., "type": ...} or {"error": null}.
_CHILD = r"""
import json, resource, signal, sys
from pathlib import Path
from clipfood_assets.lake import LocalLake, S3Lake

spec, op, down = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
lake = (LocalLake(spec["root"]) if "root" in spec else
        S3Lake(spec["endpoint"], "testing", "testing", secure=False, retries=0, timeout=5))
source = Path(spec["source"])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed by the signal
resource.setrlimit(resource.RLIMIT_FSIZE, (spec["limit"], resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    if op == "put_bytes":
        lake.put_bytes("zone-a", "d/big.bin", source.read_bytes())
    elif op == "put_file":
        lake.put_file("zone-a", "d/big.bin", source)
    elif op == "copy":
        lake.copy("zone-a", "src/big.bin", "zone-a", "d/big.bin")
    elif op == "get_file":
        lake.get_file("zone-a", "src/big.bin", down / "big.bin")
    print(json.dumps({"error": None}))
except Exception as exc:
    print(json.dumps({"error": str(exc), "type": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__]}))
"""


def _files(folder: Path) -> set[str]:
    """Every file under folder, hidden ones included."""
    return {(Path(d) / n).relative_to(folder).as_posix() for d, _, names in os.walk(folder) for n in names}


def _run_child(spec: dict, op: str, down: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec), op, str(down)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("op", ["put_bytes", "put_file", "copy"])
def test_a_write_over_the_file_size_limit_leaves_no_temp_file_and_the_old_object(tmp_path, op):
    lake = LocalLake(tmp_path / "lake")
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(BIG))
    lake.put_file("zone-a", "src/big.bin", source)
    lake.put_bytes("zone-a", "d/big.bin", b"the previous version")
    before = _files(tmp_path / "lake")

    result = _run_child({"root": str(lake.root), "source": str(source), "limit": LIMIT}, op, tmp_path / "down")

    assert result["type"] == "LakeError", result
    assert "file too large" in result["error"] and lake.uri("zone-a", "d/big.bin") in result["error"]
    assert _files(tmp_path / "lake") == before, "a temp file was left beside the objects"
    assert lake.get_bytes("zone-a", "d/big.bin") == b"the previous version"


def test_a_download_over_the_file_size_limit_leaves_no_partial_file(lake, bucket, tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(BIG))
    # The child names its bucket zone-a; on a shared S3 server that is fine (the server is reset per test).
    lake.put_file("zone-a", "src/big.bin", source)
    spec = ({"root": str(lake.root)} if isinstance(lake, LocalLake) else {"endpoint": lake.endpoint})
    down = tmp_path / "down"
    down.mkdir()

    result = _run_child({**spec, "source": str(source), "limit": LIMIT}, "get_file", down)

    assert "LakeError" in result["mro"], result
    assert "file too large" in result["error"] and lake.uri("zone-a", "src/big.bin") in result["error"]
    assert _files(down) == set(), "the partial download was left behind"


# A full disk. Mounting needs root or a user namespace: `unshare -r -m` gives both without touching the host.
_FULL_DISK_CHILD = r"""
import json, os, sys
from pathlib import Path
from clipfood_assets.lake import LakeError, LocalLake

disk = Path(sys.argv[1])
lake = LocalLake(disk / "lake")
local = LocalLake(sys.argv[2])  # outside the small disk: the source of the download
free = lambda: os.statvfs(disk).f_bfree
files = lambda: sorted(str(p.relative_to(disk)) for p in disk.rglob("*") if p.is_file())
lake.put_bytes("zone-a", "src/part.bin", os.urandom(100 * 1024))  # fits, as a copy source
out = {}
for op in ("put_bytes", "put_file", "copy", "get_file"):
    if op == "copy":
        lake.copy("zone-a", "src/part.bin", "zone-a", "d/x.bin")  # 200 of 256 KiB used: a second copy fails
    start, listed = free(), files()
    try:
        if op == "put_bytes":
            lake.put_bytes("zone-a", "d/y.bin", os.urandom(1 << 20))
        elif op == "put_file":
            lake.put_file("zone-a", "d/y.bin", Path(sys.argv[3]))
        elif op == "copy":
            lake.copy("zone-a", "src/part.bin", "zone-a", "d/y.bin")
        else:
            local.get_file("zone-a", "src/big.bin", disk / "down" / "big.bin")
        out[op] = {"error": None}
    except LakeError as exc:
        out[op] = {"error": str(exc), "freed": free() == start, "files_same": files() == listed, "files": files()}
    lake.delete("zone-a", "d/x.bin")
lake.put_bytes("zone-a", "d/after.bin", b"a small write still fits")
out["after"] = lake.get_bytes("zone-a", "d/after.bin").decode()
print(json.dumps(out))
"""


def test_a_write_to_a_full_disk_leaves_no_temp_file_and_frees_its_space(tmp_path):
    if not shutil.which("unshare"):
        pytest.skip("no unshare(1) to mount a small tmpfs")
    disk, big = tmp_path / "disk", tmp_path / "big.bin"
    disk.mkdir()
    big.write_bytes(os.urandom(1 << 20))
    LocalLake(tmp_path / "other").put_file("zone-a", "src/big.bin", big)
    script = ('mount -t tmpfs -o size=256k clipfood-test "$1" || { echo "no small disk" >&2; exit 97; }\n'
              'exec "$0" -c "$4" "$1" "$2" "$3"')
    done = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script, sys.executable, str(disk),
                           str(tmp_path / "other"), str(big), _FULL_DISK_CHILD],
                          check=False, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and (done.stderr.startswith("unshare:") or "no small disk" in done.stderr):
        pytest.skip(f"cannot mount a small tmpfs here (no user namespaces?): {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for op, uri in (("put_bytes", "zone-a/d/y.bin"), ("put_file", "zone-a/d/y.bin"), ("copy", "zone-a/d/y.bin"),
                    ("get_file", "zone-a/src/big.bin")):
        outcome = result[op]
        assert outcome["error"] and "disk full" in outcome["error"] and uri in outcome["error"], (op, outcome)
        assert outcome["files_same"], (op, outcome["files"])
        assert outcome["freed"], f"{op}: the failed write kept its space"
    assert result["after"] == "a small write still fits"
    assert disk.is_dir() and _files(disk) == set(), "the mount stayed in the child's namespace"


def test_delete_prefix_removes_temp_files_of_killed_writers_not_live_ones(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    lake.put_bytes("zone-a", "run_a/x.json", b"{}")
    lake.put_bytes("zone-a", "run_b/x.json", b"{}")
    folder = tmp_path / "lake" / "zone-a"
    for path in (folder / "run_a" / "sub" / ".clipfood-tmp-killed", folder / "run_b" / ".clipfood-tmp-other"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial" * 1000)

    # A temp file younger than stale_temp_s may be a write in progress: it stays.
    assert lake.delete_prefix("zone-a", "run_a/") == 1
    assert (folder / "run_a" / "sub" / ".clipfood-tmp-killed").exists()

    stale = LocalLake(tmp_path / "lake", stale_temp_s=0.0)
    assert stale.delete_prefix("zone-a", "run_a/") == 0
    assert not (folder / "run_a").exists(), "the killed writer's temp file and its empty folders stay"
    # Only the folders under the prefix are swept.
    assert (folder / "run_b" / ".clipfood-tmp-other").exists()
    assert [o.key for o in stale.list("zone-a")] == ["run_b/x.json"]
