"""Project-relative defaults, resolved the same way from the CLI, the UI and the tests."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = PROJECT_ROOT / "configs"
EXPERIMENT_CONFIG = CONFIGS_DIR / "experiment_config.yaml"
AUGMENTATION_CONFIG = CONFIGS_DIR / "augmentation_config.yaml"


def state_dir() -> Path:
    """The project state folder (lake, base model, Dagster home): $CLIPFOOD_HOME or `.clipfood/`."""
    return Path(os.environ.get("CLIPFOOD_HOME") or PROJECT_ROOT / ".clipfood")


STATE_DIR = state_dir()


def resolve_project_path(path: str | Path) -> Path:
    """Relative paths are taken from the project root, so `dagster dev` and the CLI agree."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else (PROJECT_ROOT / path)
