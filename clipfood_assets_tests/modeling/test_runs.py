"""An experiment run's config: stored overrides, launch overrides, and the shared base model."""

import pytest

from clipfood_assets.lake.layout import FINE_TUNING_ZONE, run_config_key
from clipfood_assets.modeling.runs import (
    parse_launch_overrides,
    read_run_overrides,
    register_run,
    resolve_run_config,
)
from clipfood_assets.paths import EXPERIMENT_CONFIG


def test_launch_overrides_accept_a_mapping_and_refuse_anything_else():
    assert parse_launch_overrides("") == {} and parse_launch_overrides("  \n") == {}
    assert parse_launch_overrides("training: {epochs: 5}") == {"training": {"epochs": 5}}
    with pytest.raises(ValueError, match="overrides_yaml: not valid YAML"):
        parse_launch_overrides("training: [unclosed")
    with pytest.raises(ValueError, match="overrides_yaml: must be a mapping"):
        parse_launch_overrides("- epochs\n- 5\n")


def test_launch_overrides_win_over_stored_and_the_platform_base_model_fills_model_name():
    cfg = resolve_run_config(
        EXPERIMENT_CONFIG,
        stored={"lora": {"r": 4}, "training": {"epochs": 2}},
        launch_overrides={"training": {"epochs": 7}},
        base_model="/models/base",
    )
    assert (cfg.lora.r, cfg.training.epochs, cfg.model.name) == (4, 7, "/models/base")
    assert cfg.lora.lora_alpha == 16  # untouched keys keep the platform default
    with pytest.raises(ValueError, match="training.epochs"):
        resolve_run_config(EXPERIMENT_CONFIG, {}, {"training": {"epochs": "many"}}, "/models/base")


@pytest.mark.parametrize("where", ["stored", "launch"])
def test_a_run_naming_another_model_is_refused_not_silently_replaced(where):
    other = {"model": {"name": "someone/else"}}
    stored, launch = (other, {}) if where == "stored" else ({}, other)
    with pytest.raises(ValueError, match=r"model.name 'someone/else' .* differs from the platform's base model "
                                         r"'/models/base'.*clipfood base-model --use"):
        resolve_run_config(EXPERIMENT_CONFIG, stored, launch, "/models/base")


def test_a_run_may_repeat_the_platform_base_model(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    cfg = resolve_run_config(EXPERIMENT_CONFIG, {"model": {"name": str(tmp_path / "." / "m")}}, {}, str(model_dir))
    assert cfg.model.name == str(model_dir)


def test_stored_run_config_must_be_a_mapping(local_lake):
    assert read_run_overrides(local_lake, "fresh") == {}
    local_lake.put_bytes(FINE_TUNING_ZONE, run_config_key("broken"), b"- a\n- list\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        read_run_overrides(local_lake, "broken")


def test_register_run_validates_before_writing(local_lake):
    with pytest.raises(ValueError, match="lora.rank"):
        register_run(local_lake, "bad", EXPERIMENT_CONFIG, {"lora": {"rank": 8}}, "/models/base")
    with pytest.raises(ValueError, match="differs from the platform's base model"):
        register_run(local_lake, "other", EXPERIMENT_CONFIG, {"model": {"name": "x/y"}}, "/models/base")
    assert not local_lake.exists(FINE_TUNING_ZONE, run_config_key("bad"))
    assert not local_lake.exists(FINE_TUNING_ZONE, run_config_key("other"))
    cfg = register_run(local_lake, "ok", EXPERIMENT_CONFIG, {"lora": {"r": 16}}, "/models/base")
    # Only what the user asked for is stored: the platform defaults stay the platform's.
    assert cfg.lora.r == 16 and read_run_overrides(local_lake, "ok") == {"lora": {"r": 16}}
