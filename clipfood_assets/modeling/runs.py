"""An experiment run's config: the platform defaults, the run's stored config, the launch overrides."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from clipfood_assets.lake.base import Lake, ObjectNotFound
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, run_config_key
from clipfood_assets.modeling.config import ExperimentConfig, config_to_yaml, deep_merge, load_experiment_config


def read_run_overrides(lake: Lake, run_key: str) -> dict[str, Any]:
    """The config a user registered for a run (empty when the run was added without one)."""
    try:
        raw = lake.get_bytes(FINE_TUNING_ZONE, run_config_key(run_key))
    except ObjectNotFound:
        return {}
    loaded = yaml.safe_load(raw) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{lake.uri(FINE_TUNING_ZONE, run_config_key(run_key))}: a run config must be a mapping")
    return loaded


def register_run(lake: Lake, run_key: str, base_config: Path, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """Validate a run's config against the platform defaults and store it as the run's config.yaml."""
    cfg = load_experiment_config(base_config, overrides=overrides)
    lake.put_bytes(FINE_TUNING_ZONE, run_config_key(run_key), config_to_yaml(cfg).encode(), "application/yaml")
    return cfg


def resolve_run_config(
    base_config: Path, stored: Mapping[str, Any], launch_overrides: Mapping[str, Any], base_model: str
) -> ExperimentConfig:
    """Every run of the platform starts from the same base model as the baseline (M0)."""
    merged = deep_merge(dict(stored), launch_overrides)
    return load_experiment_config(base_config, overrides=deep_merge(merged, {"model": {"name": base_model}}))


def parse_launch_overrides(text: str) -> dict[str, Any]:
    """The launchpad's `overrides_yaml`: empty, or a YAML mapping of config keys."""
    if not text.strip():
        return {}
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"overrides_yaml: not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"overrides_yaml: must be a mapping of config keys, got {type(loaded).__name__}")
    return loaded
