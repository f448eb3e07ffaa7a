"""Hyper-parameter sweeps: a base config and a grid (or a list) of runs, expanded into run keys.

A sweep file (YAML)::

    name: rank-lr                     # optional; default: the file's stem
    base: {training: {epochs: 5}}     # overrides applied to every point (optional)
    grid:                             # the Cartesian product of these values...
      lora.r: [4, 8, 16]
      training.learning_rate: [1.0e-4, 3.0e-4, 1.0e-3]
    # runs:                           # ...or an explicit list of points instead of a grid
    #   - {lora.r: 4}
    #   - {lora.r: 16, training.learning_rate: 3.0e-4}

Each point becomes one experiment run (a partition), keyed from the sweep and its values
(``rank-lr-r4-learning_rate0.0001``), so a point's key is the same every time the file is read.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipfood_assets.lake.layout import RUN_KEY_PATTERN, validate_run_key
from clipfood_assets.modeling.config import deep_merge, read_config_mapping
from clipfood_assets.modeling.runs import resolve_run_config

MAX_POINTS = 100  # a typo in a grid should not register thousands of runs
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class SweepPoint:
    run_key: str
    values: dict[str, Any]  # dotted key -> value of this point
    overrides: dict[str, Any] = field(default_factory=dict)  # what the run is registered with


@dataclass(frozen=True)
class Sweep:
    name: str
    points: tuple[SweepPoint, ...]

    @property
    def run_keys(self) -> list[str]:
        return [p.run_key for p in self.points]


def _value_text(value: Any) -> str:
    text = format(value, "g") if isinstance(value, float) else str(value)
    return _UNSAFE.sub("_", text)


def point_run_key(name: str, values: Mapping[str, Any]) -> str:
    """``<name>-<last key part><value>…``; a digest keeps it within 64 safe characters when it is long."""
    key = "-".join([name] + [f"{dotted.rsplit('.', 1)[-1]}{_value_text(v)}" for dotted, v in values.items()])
    if not RUN_KEY_PATTERN.match(key) or ".." in key:
        digest = hashlib.sha256(repr(sorted(values.items())).encode()).hexdigest()[:10]
        key = f"{name[:40]}-{digest}"
    return validate_run_key(key)


def _points(spec: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    grid, runs = spec.get("grid"), spec.get("runs")
    if (grid is None) == (runs is None):
        raise ValueError(f"{where}: give exactly one of 'grid' (values per key) or 'runs' (a list of points)")
    if grid is not None:
        if not isinstance(grid, Mapping) or not grid:
            raise ValueError(f"{where}: grid must be a non-empty mapping of config keys to lists of values")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"{where}: grid.{key} must be a non-empty list of values")
        keys = list(grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    if not isinstance(runs, list) or not runs or not all(isinstance(r, Mapping) and r for r in runs):
        raise ValueError(f"{where}: runs must be a non-empty list of non-empty mappings of config keys")
    return [dict(r) for r in runs]


def load_sweep(source: Path | Mapping[str, Any], base_config: Path, base_model: str, name: str | None = None) -> Sweep:
    """Expand a sweep file (or mapping) into validated points.

    Every point's config is resolved against ``base_config`` and ``base_model`` before anything
    is registered. Raises ValueError naming the file and the point for a malformed sweep, an
    invalid config, more than ``MAX_POINTS`` points, or two points with the same run key.
    """
    where = str(source) if isinstance(source, Path) else "sweep"
    spec = read_config_mapping(source)
    unknown = set(spec) - {"name", "base", "grid", "runs"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; a sweep has name, base and grid or runs")
    sweep_name = spec.get("name") or name or (source.stem if isinstance(source, Path) else None)
    if not isinstance(sweep_name, str) or not sweep_name:
        raise ValueError(f"{where}: the sweep needs a name")
    sweep_name = _UNSAFE.sub("-", sweep_name).strip("-.")[:40] or "sweep"
    base = spec.get("base") or {}
    if not isinstance(base, Mapping):
        raise ValueError(f"{where}: base must be a mapping of config keys")
    raw_points = _points(spec, where)
    if len(raw_points) > MAX_POINTS:
        raise ValueError(f"{where}: {len(raw_points)} points; at most {MAX_POINTS} per sweep")
    points, seen = [], {}
    for index, values in enumerate(raw_points, 1):
        overrides = deep_merge(dict(base), values)
        try:
            resolve_run_config(base_config, overrides, {}, base_model)
        except ValueError as exc:
            raise ValueError(f"{where}: point {index} {values}: {exc}") from None
        run_key = point_run_key(sweep_name, values)
        if run_key in seen:
            raise ValueError(f"{where}: points {seen[run_key]} and {index} are the same run ({run_key})")
        seen[run_key] = index
        points.append(SweepPoint(run_key, values, overrides))
    return Sweep(sweep_name, tuple(points))
