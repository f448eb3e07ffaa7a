"""Where the platform finds its files, the same from the CLI, the UI, a run container and the tests.

The default configs ship inside the package (``clipfood_assets/configs/``; in a checkout,
``configs/`` is a link to them), so an installed wheel finds them as a checkout does. Relative
paths a user gives (a run config, a base-model folder) are taken from the working directory;
the state folder is ``$CLIPFOOD_HOME``, else ``.clipfood/`` in the working directory.
"""

from __future__ import annotations

from pathlib import Path

from clipfood_assets.settings import ClipfoodSettings

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
EXPERIMENT_CONFIG = CONFIGS_DIR / "experiment_config.yaml"
AUGMENTATION_CONFIG = CONFIGS_DIR / "augmentation_config.yaml"
DEMO_RUN_CONFIG = CONFIGS_DIR / "runs" / "demo.yaml"

__all__ = ["AUGMENTATION_CONFIG", "CONFIGS_DIR", "DEMO_RUN_CONFIG", "EXPERIMENT_CONFIG", "resolve_user_path",
           "state_dir"]


def state_dir() -> Path:
    """The state folder (lake, base model, Dagster home): $CLIPFOOD_HOME or `.clipfood/` here."""
    return ClipfoodSettings.from_env().home


def resolve_user_path(path: str | Path) -> Path:
    """A path as the user wrote it: relative ones are taken from the working directory."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else (Path.cwd() / path)
