"""An experiment run's config: the platform defaults, the run's stored config, the launch overrides."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from clipfood_assets.lake.base import Lake, ObjectNotFound
from clipfood_assets.lake.artifacts import manifest_key
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, LORA_PREFIX, RUN_KEY_PATTERN, run_config_key
from clipfood_assets.paths import resolve_user_path
from clipfood_assets.modeling.config import ExperimentConfig, deep_merge, load_experiment_config
from clipfood_assets.yaml_files import yaml_mapping


def read_run_overrides(lake: Lake, run_key: str) -> dict[str, Any]:
    """The config a user registered for a run (empty when the run was added without one)."""
    try:
        raw = lake.get_bytes(FINE_TUNING_ZONE, run_config_key(run_key))
    except ObjectNotFound:
        return {}
    return yaml_mapping(raw, lake.uri(FINE_TUNING_ZONE, run_config_key(run_key)), "a run config must be a mapping")


def runs_in_lake(lake: Lake, *, evaluated: bool = False) -> list[str]:
    """The run keys the lake holds a folder for (``experiments/lora/run_<key>/``), sorted; with
    ``evaluated``, only those whose M1 results were written (their manifest exists; readers still
    check the artifact is complete). The lake is the truth: an instance's partitions follow it.
    Streams the listing (one pass, constant memory besides the keys)."""
    results_manifest = manifest_key("", "lora_results")
    keys = set()
    for obj in lake.list(FINE_TUNING_ZONE, LORA_PREFIX):
        folder, _, name = obj.key[len(LORA_PREFIX):].partition("/")
        key = folder[len("run_"):]
        if folder.startswith("run_") and RUN_KEY_PATTERN.match(key) and (not evaluated or name == results_manifest):
            keys.add(key)
    return sorted(keys)


def register_run(
    lake: Lake, run_key: str, base_config: Path, overrides: Mapping[str, Any], base_model: str
) -> ExperimentConfig:
    """Validate a run's overrides against the platform defaults and store them (only them) for the run.

    Raises ValueError for an invalid config or a ``model.name`` other than the platform's base model.
    """
    cfg = resolve_run_config(base_config, overrides, {}, base_model)
    lake.put_bytes(FINE_TUNING_ZONE, run_config_key(run_key), yaml.safe_dump(dict(overrides), sort_keys=True).encode(),
                   "application/yaml")
    return cfg


def resolve_run_config(
    base_config: Path, stored: Mapping[str, Any], launch_overrides: Mapping[str, Any], base_model: str
) -> ExperimentConfig:
    """The run's config: platform defaults, then its stored overrides, then this launch's overrides.

    ``model.name`` is the platform's base model (M1−M0 only means something on one base model): a
    run may repeat it but never name another, which is refused rather than silently replaced.
    """
    merged = deep_merge(dict(stored), launch_overrides)
    asked = (merged.get("model") or {}).get("name") if isinstance(merged.get("model"), Mapping) else None
    if asked is not None and not _same_model(str(asked), base_model):
        raise ValueError(
            f"model.name {asked!r} in the run config differs from the platform's base model {base_model!r}, which "
            "M0 was evaluated with; M1−M0 compares one base model with and without adapters. Remove model.name "
            "from the run config, or change the platform's base model with `clipfood base-model --use NAME` "
            "(or $CLIPFOOD_BASE_MODEL)."
        )
    return load_experiment_config(base_config, overrides=deep_merge(merged, {"model": {"name": base_model}}))


def _same_model(a: str, b: str) -> bool:
    """The same hub id, or two spellings of one local folder."""
    return a == b or resolve_user_path(a).resolve() == resolve_user_path(b).resolve()


def parse_launch_overrides(text: str) -> dict[str, Any]:
    """The launchpad's `overrides_yaml`: empty, or a YAML mapping of config keys."""
    if not text.strip():  # whitespace YAML refuses (a tab) is "no overrides" too
        return {}
    return yaml_mapping(text, "overrides_yaml", "must be a mapping of config keys")
