"""The project as Dagster's own `dg` reads it: `dg check defs` passes, `dg list defs` shows what the
UI shows (owners and kinds set per folder by its defs.yaml), and an asset scaffolded with
`dg scaffold defs` into defs/ is loaded with no other change."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clipfood_assets_tests import REPO_ROOT
from clipfood_assets_tests.defs.test_definitions import EXPECTED_ASSETS

DG = Path(sys.executable).with_name("dg")


def _dg(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(DG), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_COLOR": "1", **(env or {})})


def _listed(cwd: Path, env: dict | None = None) -> dict:
    out = _dg("list", "defs", "--json", cwd=cwd, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(out.stdout)


def test_dg_check_defs_passes():
    out = _dg("check", "defs", cwd=REPO_ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "All definitions loaded successfully" in out.stdout + out.stderr


def test_dg_list_defs_shows_every_asset_with_its_group_owner_and_kinds():
    listed = _listed(REPO_ROOT)
    assets = {a["asset_key"]: a for a in listed["assets"]}
    assert {k: a["group_name"] for k, a in assets.items()} == EXPECTED_ASSETS
    for key, asset in assets.items():
        assert asset["owners"] == [{"team": "ml-platform"}], key
        assert asset["kinds"], key
    lake_folders = {"trusted_zone", "data_zone", "model_zone", "report"}
    assert all("s3" in a["kinds"] for a in assets.values() if a["group_name"] in lake_folders)
    assert "s3" not in assets["exploitation_collections"]["kinds"]  # Chroma, not the lake
    assert {s["name"] for s in listed["sensors"]} >= {"trusted_zone_sensor", "automation_condition_sensor",
                                                       "sweep_sensor", "lake_runs_sensor"}
    assert {r["name"] for r in listed["resources"]} == {"lake", "io_manager", "compute", "settings"}


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """The checkout's files in a folder of their own, so a scaffolded file never touches the checkout."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        src = REPO_ROOT / name
        if src.is_file() and not src.is_symlink():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp_path / name)
    return tmp_path


def test_an_asset_scaffolded_into_defs_is_loaded(project_copy: Path):
    out = _dg("scaffold", "defs", "dagster.asset", "recipe_stats.py", cwd=project_copy)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert (project_copy / "clipfood_assets/defs/recipe_stats.py").is_file()
    # The copy's package first on the path: the editable install would import the checkout's.
    listed = _listed(project_copy, env={"PYTHONPATH": str(project_copy)})
    keys = {a["asset_key"] for a in listed["assets"]}
    assert keys == set(EXPECTED_ASSETS) | {"recipe_stats"}
