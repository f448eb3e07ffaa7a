"""Experiment config: defaults match the YAML, overrides merge, bad values name their key."""

from __future__ import annotations

import pytest
import yaml

from clipfood_assets.modeling.config import (
    ExperimentConfig,
    config_to_yaml,
    load_experiment_config,
)
from clipfood_assets.paths import EXPERIMENT_CONFIG


def test_yaml_file_equals_model_defaults_and_seed_values():
    from_file = load_experiment_config(EXPERIMENT_CONFIG)
    assert from_file == load_experiment_config() == ExperimentConfig()
    assert from_file.seed == 42
    assert from_file.model.name == "openai/clip-vit-base-patch32"
    assert (from_file.lora.r, from_file.lora.lora_alpha, from_file.lora.lora_dropout) == (8, 16, "auto")
    assert from_file.lora.target_modules == ["q_proj", "k_proj", "v_proj", "out_proj"]
    t = from_file.training
    assert (t.batch_size, t.effective_batch_size, t.epochs) == ("auto", 32, 3)
    assert t.micro_batch_size() == 2  # off CUDA: the original notebooks' 2 x 16


def test_batch_size_auto_keeps_the_effective_batch():
    t = load_experiment_config().training
    assert t.micro_batch_size(device_fit=1000) == 32  # one micro-batch: no feature-cache replay
    assert t.micro_batch_size(device_fit=20) == 16  # 2 equal micro-batches of 16, not 20 + 12
    assert t.micro_batch_size(device_fit=1) == 1
    seed_style = load_experiment_config(overrides={"training": {"batch_size": 4, "gradient_accumulation_steps": 3}})
    assert (seed_style.training.effective_batch_size, seed_style.training.micro_batch_size(999)) == (12, 4)
    with pytest.raises(ValueError, match="gradient_accumulation_steps needs an integer batch_size"):
        load_experiment_config(overrides={"training.gradient_accumulation_steps": 3})
    with pytest.raises(ValueError, match="exceeds effective_batch_size"):
        load_experiment_config(overrides={"training.batch_size": 64})
    with pytest.raises(ValueError, match="per_micro_batch"):
        load_experiment_config(overrides={"training.accumulation": "per_micro_batch"})


def test_auto_choices_are_made_per_device():
    cfg = load_experiment_config()
    assert cfg.lora.dropout_on("cpu") == 0.05  # the notebooks', which the CPU demo was measured with
    assert cfg.lora.dropout_on("cuda:0") == 0.0  # no dropout passes in the GPU step
    assert cfg.on_device("cuda").lora.lora_dropout == 0.0 and cfg.on_device("cpu").lora.lora_dropout == 0.05
    assert cfg.lora.lora_dropout == "auto"  # on_device made a copy
    chosen = load_experiment_config(overrides={"lora.lora_dropout": 0.1})
    assert chosen.on_device("cuda") == chosen  # a number is a number everywhere
    assert (cfg.lora.fp32_inputs, cfg.training.cudnn_benchmark) == (False, True)


def test_overrides_deep_merge_and_dotted_keys(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"training": {"epochs": 7, "batch_size": 4}}))
    cfg = load_experiment_config(path, overrides={"training": {"epochs": 9}, "lora.scope": "vision"})
    assert cfg.training.epochs == 9
    assert cfg.training.batch_size == 4  # kept from the file
    assert cfg.training.effective_batch_size == 32  # default
    assert cfg.lora.scope == "vision"


def test_yaml_round_trip():
    cfg = load_experiment_config(overrides={"method": "baseline", "evaluation": {"recall_at": [10, 1]}})
    assert cfg.evaluation.recall_at == [1, 10]
    assert load_experiment_config(yaml.safe_load(config_to_yaml(cfg))) == cfg


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"training": {"batch_sise": 2}}, "training.batch_sise"),
        ({"training": {"batch_size": "two"}}, "training.batch_size"),
        ({"training": {"batch_size": 0}}, "training.batch_size"),
        ({"training": {"effective_batch_size": 1}}, "training.effective_batch_size"),
        ({"training": {"memory_fraction": 1.5}}, "training.memory_fraction"),
        ({"training": {"compile": "maybe"}}, "training.compile"),
        ({"evaluation": {"batch_size": 0}}, "evaluation.batch_size"),
        ({"evaluation": {"compile": "yes"}}, "evaluation.compile"),
        ({"training": {"learning_rate": float("nan")}}, "training.learning_rate"),
        ({"training": {"max_grad_norm": float("inf")}}, "training.max_grad_norm"),
        ({"lora": {"scope": "audio"}}, "lora.scope"),
        ({"lora": {"lora_dropout": 1.5}}, "lora.lora_dropout"),
        ({"lora": {"lora_dropout": "none"}}, "lora.lora_dropout"),
        ({"lora": {"fp32_inputs": "sometimes"}}, "lora.fp32_inputs"),
        ({"training": {"cudnn_benchmark": "fast"}}, "training.cudnn_benchmark"),
        ({"evaluation": {"confidence": 1.0}}, "evaluation.confidence"),
        ({"evaluation": {"recall_at": [0, 5]}}, "evaluation.recall_at"),
        ({"method": "full"}, "method"),
        ({"unknown_section": {}}, "unknown_section"),
        ({"training": 5}, "training"),
        ({"training": {"epochs": "3"}}, "training.epochs"),  # strict: text is not coerced to a number
        ({"training": {"mask_same_recipe": "yes"}}, "training.mask_same_recipe"),
        ({"training": {"learning_rate": "fast"}}, "training.learning_rate"),
    ],
)
def test_bad_values_raise_value_error_naming_the_key(overrides, key):
    with pytest.raises(ValueError, match=rf"{key}\b"):
        load_experiment_config(overrides=overrides)


def test_learning_rates_in_yaml_exponent_notation_are_numbers(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-4, without a dot, as the text "1e-4": still a learning rate.
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  learning_rate: 1e-4\n  weight_decay: 5e-2\n")
    training = load_experiment_config(path).training
    assert (training.learning_rate, training.weight_decay) == (1e-4, 5e-2)


def test_configs_are_frozen_and_changed_by_copy():
    cfg = ExperimentConfig()
    with pytest.raises(ValueError, match="frozen"):
        cfg.training.epochs = 5
    changed = cfg.model_copy(update={"training": cfg.training.model_copy(update={"epochs": 5})})
    assert (cfg.training.epochs, changed.training.epochs) == (3, 5)


@pytest.mark.parametrize("text", ["- a\n- b\n", "training: [unclosed\n", "42\n"])
def test_malformed_yaml_file_raises_value_error(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.yaml"):
        load_experiment_config(path)


def test_empty_yaml_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_experiment_config(path) == ExperimentConfig()
