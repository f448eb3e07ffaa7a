"""Deployment-wide settings that every process (CLI, `dagster dev`, daemon, run workers) resolves alike.

The platform's base model is one of them: M0 and every M1 run share it, so it belongs to the
deployment, not to a run. It is resolved, first match wins, from

1. the ``CLIPFOOD_BASE_MODEL`` environment variable (containers, CI, a one-off override);
2. ``<CLIPFOOD_HOME>/deployment.yaml`` (``base_model: …``), written by ``clipfood base-model``
   and ``clipfood demo``;
3. ``model.name`` of ``configs/experiment_config.yaml`` (``openai/clip-vit-base-patch32``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from clipfood_assets.paths import resolve_user_path, state_dir
from clipfood_assets.settings import BASE_MODEL_ENV, ClipfoodSettings
from clipfood_assets.yaml_files import read_yaml_mapping


def deployment_file() -> Path:
    return state_dir() / "deployment.yaml"


@dataclass(frozen=True)
class BaseModel:
    """The platform's base model: a hub id or an absolute local folder, and where that came from."""

    name: str
    source: str

    def describe(self) -> str:
        return f"{self.name} (from {self.source})"


def _normalise(name: str) -> str:
    local = resolve_user_path(name)
    return str(local) if local.exists() else name


def _settings() -> dict:
    """deployment.yaml as a mapping ({} when absent); ValueError naming the file when malformed."""
    path = deployment_file()
    if not path.is_file():
        return {}
    expected = "expected a mapping with a string 'base_model'"
    try:
        loaded = read_yaml_mapping(path, expected)
    except ValueError as exc:
        raise ValueError(f"{exc}; fix or delete it") from None
    if not isinstance(loaded.get("base_model", ""), str):
        raise ValueError(f"{path}: {expected}; fix or delete it")
    return loaded


def _recorded() -> str:
    return _settings().get("base_model", "").strip()


def platform_base_model(configured: str | None = None) -> BaseModel:
    """The base model every process uses; ``configured`` is the experiment config's ``model.name``
    (by default that of ``configs/experiment_config.yaml``).

    Raises ValueError when ``deployment.yaml`` is malformed.
    """
    from_env = ClipfoodSettings.from_env().base_model
    if from_env:
        return BaseModel(_normalise(from_env), f"${BASE_MODEL_ENV}")
    recorded = _recorded()
    if recorded:
        return BaseModel(_normalise(recorded), str(deployment_file()))
    if configured is None:
        from clipfood_assets.modeling.config import load_experiment_config
        from clipfood_assets.paths import EXPERIMENT_CONFIG

        configured = load_experiment_config(EXPERIMENT_CONFIG).model.name
    return BaseModel(_normalise(configured), "model.name in the experiment config")


def record_base_model(name: str) -> Path:
    """Make ``name`` (hub id or folder) the deployment's base model; local folders are stored absolute.

    Other settings in the file are kept; a malformed file is a ValueError (never silently replaced).
    """
    path = deployment_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    current = _settings()
    current["base_model"] = _normalise(name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("# Written by `clipfood`: settings shared by the CLI, the Dagster UI, daemon and runs.\n"
                   + yaml.safe_dump(current, sort_keys=True), encoding="utf-8")
    tmp.replace(path)
    return path
