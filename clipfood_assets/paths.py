"""Project-relative defaults, resolved the same way from the CLI, the UI and the tests."""

from __future__ import annotations

from pathlib import Path

from clipfood_assets.settings import PROJECT_ROOT, ClipfoodSettings

CONFIGS_DIR = PROJECT_ROOT / "configs"
EXPERIMENT_CONFIG = CONFIGS_DIR / "experiment_config.yaml"
AUGMENTATION_CONFIG = CONFIGS_DIR / "augmentation_config.yaml"

__all__ = ["AUGMENTATION_CONFIG", "CONFIGS_DIR", "EXPERIMENT_CONFIG", "PROJECT_ROOT", "STATE_DIR",
           "resolve_project_path", "state_dir"]


def state_dir() -> Path:
    """The project state folder (lake, base model, Dagster home): $CLIPFOOD_HOME or `.clipfood/`."""
    return ClipfoodSettings.from_env().home


STATE_DIR = state_dir()


def resolve_project_path(path: str | Path) -> Path:
    """Relative paths are taken from the project root, so `dagster dev` and the CLI agree."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else (PROJECT_ROOT / path)
