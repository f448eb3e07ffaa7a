"""The image installs the wheel, not the checkout: the wheel alone, in a fresh venv and away from the
checkout, finds its configs, keeps its state where it is told, and its definitions load."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from clipfood_assets_tests import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO_ROOT)], check=True, capture_output=True, timeout=600)
    return next(out.glob("clipfood_assets-*.whl"))


def test_the_wheel_carries_the_default_configs_and_no_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for config in ("experiment_config.yaml", "augmentation_config.yaml", "runs/demo.yaml", "sweeps/demo_rank_lr.yaml"):
        assert f"clipfood_assets/configs/{config}" in names, config
    assert "clipfood_assets/py.typed" in names
    for folder in ("trusted_zone", "data_zone", "model_zone", "report", "exploitation"):  # owners, kinds
        assert f"clipfood_assets/defs/{folder}/defs.yaml" in names, folder
    assert not [n for n in names if n.startswith("clipfood_assets_tests")]


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory, wheel) -> Path:
    """A new venv with only the wheel installed in it; its dependencies are this venv's (by a .pth line,
    so this venv's editable install of the checkout is not seen there)."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    return python


def test_the_installed_wheel_works_outside_the_checkout(fresh_venv, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPFOOD_", "DAGSTER_", "MINIO_"))}
    probe = (
        "import clipfood_assets, clipfood_assets.paths as p, pathlib;"
        "from clipfood_assets.modeling.config import load_experiment_config;"
        "print(clipfood_assets.__file__); print(p.state_dir());"
        "print(load_experiment_config(p.EXPERIMENT_CONFIG).model.name)"
    )
    out = subprocess.run([str(fresh_venv), "-c", probe], cwd=work, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.splitlines()
    assert "site-packages" in out[0] and str(REPO_ROOT) not in out[0]
    assert out[1] == str(work / ".clipfood")  # the state folder follows the working directory...
    assert out[2] == "openai/clip-vit-base-patch32"  # ...and the configs come with the package
    env_home = dict(env, CLIPFOOD_HOME=str(tmp_path / "state"))
    home = subprocess.run([str(fresh_venv), "-c", "import clipfood_assets.paths as p; print(p.state_dir())"],
                          cwd=work, env=env_home, capture_output=True, text=True, check=True).stdout.strip()
    assert home == str(tmp_path / "state")
    validate = subprocess.run([str(fresh_venv), "-m", "dagster", "definitions", "validate", "-m",
                               "clipfood_assets.definitions"], cwd=work, env=env_home, capture_output=True,
                              text=True, timeout=600)
    assert validate.returncode == 0, validate.stdout[-2000:] + validate.stderr[-2000:]
    script = Path(fresh_venv).parent / "clipfood"
    help_text = subprocess.run([str(script), "--help"], cwd=work, env=env_home, capture_output=True, text=True,
                               timeout=120, check=True).stdout
    assert "demo" in help_text
