"""Sweep files: grids and lists expand into validated, stably keyed points; bad files are refused whole."""

import pytest
import yaml

from clipfood_assets.modeling.sweep import MAX_POINTS, load_sweep, point_run_key
from clipfood_assets.paths import CONFIGS_DIR, EXPERIMENT_CONFIG

BASE_MODEL = "/models/base"


def _write(tmp_path, spec, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec) if not isinstance(spec, str) else spec)
    return path


def test_a_grid_is_the_cartesian_product_with_stable_keys(tmp_path):
    spec = {"name": "rank-lr", "base": {"training": {"epochs": 2}},
            "grid": {"lora.r": [4, 8, 16], "training.learning_rate": [1e-4, 3e-4, 1e-3]}}
    sweep = load_sweep(_write(tmp_path, spec), EXPERIMENT_CONFIG, BASE_MODEL)
    assert sweep.name == "rank-lr" and len(sweep.points) == 9 and len(set(sweep.run_keys)) == 9
    assert sweep.run_keys[0] == "rank-lr-r4-learning_rate0.0001"
    first = sweep.points[0]
    assert first.overrides == {"training": {"epochs": 2, "learning_rate": 1e-4}, "lora": {"r": 4}}
    again = load_sweep(_write(tmp_path, spec, "again.yaml"), EXPERIMENT_CONFIG, BASE_MODEL)
    assert again.run_keys == sweep.run_keys


def test_a_list_of_runs_and_the_shipped_demo_sweep(tmp_path):
    sweep = load_sweep(_write(tmp_path, {"runs": [{"lora.r": 4}, {"lora.r": 16, "lora.lora_alpha": 32}]}, "mine.yaml"),
                       EXPERIMENT_CONFIG, BASE_MODEL)
    assert sweep.name == "mine" and sweep.run_keys == ["mine-r4", "mine-lora_alpha32-r16"]
    demo = load_sweep(CONFIGS_DIR / "sweeps" / "demo_rank_lr.yaml", EXPERIMENT_CONFIG, BASE_MODEL)
    assert len(demo.points) == 3


@pytest.mark.parametrize("spec, message", [
    ({"grid": {"lora.r": [4]}, "runs": [{"lora.r": 8}]}, "exactly one of 'grid'"),
    ({}, "exactly one of 'grid'"),
    ({"grid": {"lora.r": []}}, "grid.lora.r must be a non-empty list"),
    ({"grid": {"lora.r": 4}}, "non-empty list"),
    ({"runs": []}, "runs must be a non-empty list"),
    ({"runs": ["lora.r=4"]}, "runs must be a non-empty list"),
    ({"grid": {"lora.rank": [4, 8]}}, r"point 1 .*lora.rank"),  # unknown config key
    ({"grid": {"training.learning_rate": [1e-3, -1]}}, r"point 2 .*training.learning_rate"),  # out of range
    ({"grid": {"lora.r": [4, 4]}}, "are the same run"),  # duplicated point
    ({"grid": {"model.name": ["other/model"]}}, "differs from the platform's base model"),
    ({"grid": {"lora.r": list(range(1, MAX_POINTS + 2))}}, "at most"),  # oversized
    ({"sweep": 1, "grid": {"lora.r": [4]}}, "unknown keys"),
    ("- not\n- a mapping\n", "must be a mapping"),
    ("grid: [unclosed\n", "not valid YAML"),
])
def test_malformed_sweeps_are_refused_with_the_reason(tmp_path, spec, message):
    with pytest.raises(ValueError, match=message):
        load_sweep(_write(tmp_path, spec), EXPERIMENT_CONFIG, BASE_MODEL)


def test_hostile_names_and_values_still_give_safe_run_keys(tmp_path):
    sweep = load_sweep(_write(tmp_path, {"name": "../../etc x", "runs": [{"training.loss": "clip"}]}),
                       EXPERIMENT_CONFIG, BASE_MODEL)
    assert sweep.name == "etc-x" and sweep.run_keys == ["etc-x-lossclip"]
    long_key = point_run_key("n", {f"training.k{i}": 0.000123456 for i in range(12)})
    assert len(long_key) <= 64 and long_key.startswith("n-")
