"""The training step's config choices: dropout resolved per device and recorded, adapter inputs in the
compute dtype, cuDNN autotuning scoped to the step, and an auto micro-batch that a resumed run keeps."""

from __future__ import annotations

import pytest
import torch

from clipfood_assets.modeling import config as config_module
from clipfood_assets.modeling.config import load_experiment_config
from clipfood_assets.modeling.train import _load_trainable_clip, _Run, train_lora

CPU = torch.device("cpu")


def _cfg(**training):
    base = {"epochs": 1, "effective_batch_size": 8, "learning_rate": 2e-3, "checkpoint_every_steps": 1000,
            "precision": "fp32", "num_workers": 2}
    return load_experiment_config(overrides={"training": base | training})


@pytest.fixture(scope="module")
def some_pairs(synthetic_data):
    """24 positive pairs: three steps of 8."""
    positives = synthetic_data.train_pairs[synthetic_data.train_pairs["label"] == 1]
    return positives.head(24).reset_index(drop=True)


def test_dropout_auto_is_resolved_for_the_device_and_recorded(tiny_model_dir, some_pairs, synthetic_data, tmp_path):
    cfg = _cfg(batch_size=8)
    assert cfg.lora.lora_dropout == "auto"
    result = train_lora(str(tiny_model_dir), some_pairs, synthetic_data.load_image, cfg, device="cpu", work_dir=tmp_path)
    assert result.training_logs["lora_dropout"] == 0.05 == result.config.lora.lora_dropout  # off CUDA
    peft_config = (result.adapter_dir / "adapter_config.json").read_text()
    assert '"lora_dropout": 0.05' in peft_config


def _embed(model, pixels, ids):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return (model.get_image_features(pixel_values=pixels).pooler_output,
                model.get_text_features(input_ids=ids).pooler_output)


def test_adapter_inputs_stay_in_the_compute_dtype_for_the_same_numbers(tiny_model_dir):
    generator = torch.Generator().manual_seed(0)
    pixels, ids = torch.randn(4, 3, 64, 64, generator=generator), torch.randint(0, 200, (4, 9), generator=generator)
    outputs, flags = {}, {}
    for fp32_inputs in (False, True):
        cfg = load_experiment_config(overrides={"lora": {"lora_dropout": 0.0, "fp32_inputs": fp32_inputs},
                                                "training": {"precision": "bf16"}})
        torch.manual_seed(1)  # the same adapter initialisation
        model, _, _ = _load_trainable_clip(str(tiny_model_dir), cfg, CPU, "bf16")
        with torch.no_grad():  # non-zero deltas, so the adapters take part
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.05, generator=generator.manual_seed(2))
        flags[fp32_inputs] = {m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "lora_A")}
        outputs[fp32_inputs] = _embed(model.eval(), pixels, ids)
    assert flags == {False: {False}, True: {True}}
    for without_copy, with_copy in zip(outputs[False], outputs[True], strict=True):
        assert torch.equal(without_copy, with_copy)  # bf16 -> fp32 -> bf16 is exact: the copy bought nothing


@pytest.mark.parametrize("process_setting", [False, True])
def test_cudnn_benchmark_is_set_for_the_step_and_restored(tiny_model_dir, some_pairs, synthetic_data, tmp_path,
                                                          monkeypatch, process_setting):
    seen = []
    encode = _Run.encode

    def recording(self, micro):
        seen.append(torch.backends.cudnn.benchmark)
        return encode(self, micro)

    monkeypatch.setattr(_Run, "encode", recording)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", process_setting)
    train_lora(str(tiny_model_dir), some_pairs, synthetic_data.load_image, _cfg(batch_size=8, cudnn_benchmark=True),
               device="cpu", work_dir=tmp_path)
    assert seen and set(seen) == {True}
    assert torch.backends.cudnn.benchmark is process_setting


class Interrupt(Exception):
    pass


def test_a_resumed_auto_micro_batch_keeps_the_checkpoints(tiny_model_dir, some_pairs, synthetic_data, tmp_path,
                                                         monkeypatch):
    cfg = _cfg(checkpoint_every_steps=1)
    assert cfg.training.batch_size == "auto"
    args = (str(tiny_model_dir), some_pairs, synthetic_data.load_image, cfg)
    straight = train_lora(*args, device="cpu", work_dir=tmp_path / "straight")
    assert straight.training_logs["micro_batch_size"] == config_module.CPU_MICRO_BATCH == 2

    def stop_at_step_2(record):
        if record["step"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_lora(*args, device="cpu", work_dir=tmp_path / "resumed", log=stop_at_step_2)
    # The device now fits another micro-batch: a fresh run takes it, the resumed one keeps its own.
    monkeypatch.setattr(config_module, "CPU_MICRO_BATCH", 4)
    assert train_lora(*args, device="cpu", work_dir=tmp_path / "fresh").training_logs["micro_batch_size"] == 4
    resumed = train_lora(*args, device="cpu", work_dir=tmp_path / "resumed")
    assert resumed.training_logs["resumed_from_step"] == 2 and resumed.training_logs["micro_batch_size"] == 2
    assert [s["loss"] for s in resumed.training_logs["steps"]] == [s["loss"] for s in straight.training_logs["steps"]]
    with pytest.raises(ValueError, match="another configuration"):  # another micro-batch, asked for by number
        train_lora(str(tiny_model_dir), some_pairs, synthetic_data.load_image, _cfg(checkpoint_every_steps=1,
                   batch_size=4), device="cpu", work_dir=tmp_path / "resumed")
