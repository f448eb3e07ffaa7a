"""Per-epoch validation, early stopping and the best-validation adapters (resume included)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from clipfood_assets.modeling import evaluate
from clipfood_assets.modeling.checkpoint import checkpoint_steps
from clipfood_assets.modeling.config import load_experiment_config
from clipfood_assets.modeling.batching import epoch_batches
from clipfood_assets.modeling.train import train_lora

# Validation t2i R@1 per epoch, scripted: the best epoch is 2, then two without improvement.
SCRIPT = [0.2, 0.5, 0.3, 0.1, 0.6]


class Interrupt(Exception):
    pass


def _cfg(**training):
    base = {"epochs": 5, "batch_size": 8, "gradient_accumulation_steps": 2, "learning_rate": 2e-3,
            "warmup_ratio": 0.1, "precision": "fp32", "num_workers": 2, "keep_checkpoints": 10}
    return load_experiment_config(overrides={"training": base | training})


def _split(synthetic_data):
    """Hold out a few training recipes as validation (their pairs leave the training set)."""
    train = synthetic_data.train_pairs
    recipes = sorted(train["recipe_id"].unique())
    held = set(recipes[:4])
    validation = train[(train["label"] == 1) & train["recipe_id"].isin(held)][["recipe_id", "image_key", "caption"]]
    return train[~train["recipe_id"].isin(held)].reset_index(drop=True), validation.reset_index(drop=True)


@pytest.fixture
def scripted_validation(monkeypatch):
    calls = []

    def fake(model, processor, pairs, load_image, *, cfg, device):
        value = SCRIPT[len(calls)]
        calls.append(len(pairs))
        return {"text_to_image": {"R@1": value, "MRR": value}, "image_to_text": {"R@1": value, "MRR": value}}

    monkeypatch.setattr(evaluate, "validation_metrics", fake)
    return calls


def _adapter_tensors(result) -> list[torch.Tensor]:
    saved = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    return [saved[k] for k in sorted(saved) if "lora_" in k]  # the file also holds the trained logit_scale


def _checkpoint_tensors(path) -> list[torch.Tensor]:
    saved = load_file(str(path / "trainable.safetensors"))
    return [saved[k] for k in sorted(saved) if "lora_" in k]


def test_early_stopping_keeps_the_best_epochs_adapters_exactly(tiny_model_dir, synthetic_data, tmp_path,
                                                               scripted_validation):
    train, validation = _split(synthetic_data)
    steps_per_epoch = len(epoch_batches(int((train["label"] == 1).sum()), 16, 42, 0))
    cfg = _cfg(early_stopping_patience=2, checkpoint_every_steps=steps_per_epoch)
    result = train_lora(str(tiny_model_dir), train, synthetic_data.load_image, cfg, device="cpu",
                        work_dir=tmp_path, validation_pairs=validation)
    logs = result.training_logs
    assert [v["epoch"] for v in logs["validation"]] == [1, 2, 3, 4]  # epoch 5 never ran
    assert logs["stopped_early_at_epoch"] == 4 and len(logs["epochs"]) == 4
    assert logs["best_validation"]["epoch"] == 2 and logs["final_adapters"] == "best"
    assert scripted_validation == [len(validation)] * 4
    # The saved adapters are exactly the weights at the end of epoch 2 (its checkpoint).
    at_epoch_2 = dict(checkpoint_steps(tmp_path / "checkpoints"))[2 * steps_per_epoch]
    best, saved = _checkpoint_tensors(at_epoch_2), _adapter_tensors(result)
    assert len(best) == len(saved) > 0 and all(torch.equal(a, b) for a, b in zip(best, saved))
    last = _checkpoint_tensors(dict(checkpoint_steps(tmp_path / "checkpoints"))[4 * steps_per_epoch])
    assert not all(torch.equal(a, b) for a, b in zip(last, saved))


def test_final_adapters_last_keeps_the_last_epoch(tiny_model_dir, synthetic_data, tmp_path, scripted_validation):
    train, validation = _split(synthetic_data)
    cfg = _cfg(epochs=3, final_adapters="last")
    args = (str(tiny_model_dir), train, synthetic_data.load_image)
    last = train_lora(*args, cfg, device="cpu", work_dir=tmp_path / "last", validation_pairs=validation)
    scripted_validation.clear()
    no_validation = train_lora(*args, cfg, device="cpu", work_dir=tmp_path / "plain")
    assert last.training_logs["best_validation"]["epoch"] == 2
    assert all(torch.equal(a, b) for a, b in zip(_adapter_tensors(last), _adapter_tensors(no_validation)))


def test_a_resumed_run_ends_with_the_same_best_adapters(tiny_model_dir, synthetic_data, tmp_path,
                                                        scripted_validation):
    train, validation = _split(synthetic_data)
    steps_per_epoch = len(epoch_batches(int((train["label"] == 1).sum()), 16, 42, 0))
    cfg = _cfg(epochs=4, checkpoint_every_steps=steps_per_epoch)
    args = (str(tiny_model_dir), train, synthetic_data.load_image, cfg)
    straight = train_lora(*args, device="cpu", work_dir=tmp_path / "straight", validation_pairs=validation)
    scripted_validation.clear()

    def stop_in_epoch_4(record):
        if record["step"] == 3 * steps_per_epoch + 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_lora(*args, device="cpu", work_dir=tmp_path / "resumed", validation_pairs=validation,
                   log=stop_in_epoch_4)
    done = len(scripted_validation)
    resumed = train_lora(*args, device="cpu", work_dir=tmp_path / "resumed", validation_pairs=validation)
    assert done == 3 and len(scripted_validation) == 4  # the resumed run validated epoch 4 only
    assert resumed.training_logs["best_validation"] == straight.training_logs["best_validation"]
    assert [v["epoch"] for v in resumed.training_logs["validation"]] == [1, 2, 3, 4]
    assert all(torch.equal(a, b) for a, b in zip(_adapter_tensors(straight), _adapter_tensors(resumed)))


def test_real_validation_metrics_are_logged_in_range(tiny_model_dir, synthetic_data, tmp_path):
    train, validation = _split(synthetic_data)
    cfg = _cfg(epochs=2, eval_every_epochs=2)
    result = train_lora(str(tiny_model_dir), train, synthetic_data.load_image, cfg, device="cpu",
                        work_dir=tmp_path, validation_pairs=validation)
    (entry,) = result.training_logs["validation"]
    assert entry["epoch"] == 2
    for direction in ("text_to_image", "image_to_text"):
        metrics = entry["metrics"][direction]
        assert 0.0 <= metrics["R@1"] <= metrics["R@5"] <= 1.0 and 0.0 < metrics["MRR"] <= 1.0
