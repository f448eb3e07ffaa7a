"""LoRA training on synthetic recipes: it learns, it resumes exactly, it uses its negatives."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from clipfood_assets.modeling.checkpoint import checkpoint_steps
from clipfood_assets.modeling.config import load_experiment_config
from clipfood_assets.modeling.batching import epoch_batches, prepare_training_pairs
from clipfood_assets.modeling.train import build_scheduler, train_lora


def _cfg(**training):
    base = {"epochs": 3, "batch_size": 8, "gradient_accumulation_steps": 2, "learning_rate": 2e-3,
            "warmup_ratio": 0.1, "checkpoint_every_steps": 1000, "precision": "fp32", "num_workers": 2}
    return load_experiment_config(overrides={"training": base | training})


class Interrupt(Exception):
    pass


def test_training_lowers_the_loss_and_reports(tiny_model_dir, synthetic_data, tmp_path):
    cfg = _cfg()
    seen = []
    result = train_lora(str(tiny_model_dir), synthetic_data.train_pairs, synthetic_data.load_image, cfg,
                        device="cpu", work_dir=tmp_path, log=seen.append)
    logs = result.training_logs
    assert json.loads(json.dumps(logs)) == logs
    positives = int((synthetic_data.train_pairs["label"] == 1).sum())
    steps_per_epoch = len(epoch_batches(positives, 16, cfg.seed, 0))
    assert len(logs["steps"]) == 3 * steps_per_epoch == len(seen)
    assert [e["epoch"] for e in logs["epochs"]] == [1, 2, 3]
    assert logs["epochs"][-1]["avg_loss"] < logs["epochs"][0]["avg_loss"]
    assert set(logs["steps"][0]) == {"step", "epoch", "loss", "lr", "temperature", "samples_per_s", "elapsed_s"}
    assert logs["effective_batch_size"] == 16
    # 15 in-batch captions minus same-recipe ones, plus the batch's labelled negatives.
    assert 15 < logs["negatives_per_pair"] < 32
    assert result.trainable_parameters == 16_385 and result.total_parameters > result.trainable_parameters
    assert result.samples_per_s > 0 and result.training_time_s == pytest.approx(logs["total_time_s"])
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert result.adapter_dir == tmp_path / "adapters"
    temperatures = [s["temperature"] for s in logs["steps"]]
    assert all(1 / 100 <= t <= 100 for t in temperatures) and temperatures[0] != temperatures[-1]


def test_resumed_run_ends_with_the_same_weights(tiny_model_dir, synthetic_data, tmp_path):
    cfg = _cfg(epochs=2, checkpoint_every_steps=2)
    assert cfg.lora.dropout_on("cpu") > 0  # dropout on: the RNG state must be restored too
    args = (str(tiny_model_dir), synthetic_data.train_pairs, synthetic_data.load_image, cfg)
    straight = train_lora(*args, device="cpu", work_dir=tmp_path / "straight")

    def stop_at_step_3(record):
        if record["step"] == 3:
            raise Interrupt

    uploaded = []
    with pytest.raises(Interrupt):
        train_lora(*args, device="cpu", work_dir=tmp_path / "resumed", log=stop_at_step_3,
                   on_checkpoint=uploaded.append)
    assert [p.name for p in uploaded] == ["step_2"]
    resumed = train_lora(*args, device="cpu", work_dir=tmp_path / "resumed")

    assert resumed.training_logs["resumed_from_step"] == 2
    assert [s["loss"] for s in resumed.training_logs["steps"]] == [s["loss"] for s in straight.training_logs["steps"]]
    expected = load_file(str(straight.adapter_dir / "adapter_model.safetensors"))
    actual = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert expected.keys() == actual.keys() and expected
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert (resumed.adapter_dir / "logit_scale.json").read_text() == (straight.adapter_dir / "logit_scale.json").read_text()
    assert [s for s, _ in checkpoint_steps(tmp_path / "resumed" / "checkpoints")][-1] == len(straight.training_logs["steps"])

    with pytest.raises(ValueError, match="another configuration"):
        train_lora(str(tiny_model_dir), synthetic_data.train_pairs, synthetic_data.load_image,
                   _cfg(epochs=2, learning_rate=1e-4), device="cpu", work_dir=tmp_path / "resumed")


def test_seed_style_accumulation_has_one_negative_per_pair(tiny_model_dir, synthetic_data, tmp_path):
    cfg = _cfg(epochs=1, batch_size=2, gradient_accumulation_steps=4, accumulation="per_micro_batch",
               use_labelled_negatives=False, loss="clip", mask_same_recipe=False)
    result = train_lora(str(tiny_model_dir), synthetic_data.train_pairs, synthetic_data.load_image, cfg,
                        device="cpu", work_dir=tmp_path)
    assert result.training_logs["negatives_per_pair"] == 1.0
    assert all(math.isfinite(s["loss"]) for s in result.training_logs["steps"])


def _labelled(rows):
    return pd.DataFrame(rows, columns=["recipe_id", "image_key", "caption", "label"])


def test_prepare_training_pairs_routes_negatives():
    frame = _labelled([
        ("r1", "i1", "Tomato Soup", 1), ("r2", "i2", "Banana Bread", 1), ("r2", "i3", "Banana Bread", 1),
        ("r1", "i1", "Banana Bread", 0),  # a real negative of image i1 (caption of r2)
        ("r2", "i2", "Banana Bread", 0),  # mislabelled: i2's own recipe, dropped
        ("r2", "i3", "Mystery Dish", 0),  # caption of no known recipe: kept as unknown recipe
        ("r1", "i1", "Tomato Soup", 1),  # duplicate positive
    ])
    pairs = prepare_training_pairs(frame)
    assert len(pairs) == 3
    assert pairs.negatives_by_image["i1"] == [("Banana Bread", "r2")]
    assert "i2" not in pairs.negatives_by_image
    assert [c for c, _ in pairs.negatives_by_image["i3"]] == ["Mystery Dish"]
    assert prepare_training_pairs(frame, use_labelled_negatives=False).negatives_by_image == {}


@pytest.mark.parametrize(
    "frame, match",
    [
        (_labelled([("r1", "i1", "a", 1), ("r2", "i2", "b", "yes")]), "label"),
        (_labelled([("r1", "i1", "a", 1), ("r2", "i2", "b", 2)]), "label"),
        (_labelled([("r1", "i1", "a", 1), ("r2", "i2", "b", 0)]), "at least 2"),
        (pd.DataFrame({"recipe_id": ["r1"], "caption": ["a"]}), "image_key"),
    ],
)
def test_prepare_training_pairs_rejects_bad_input(frame, match):
    with pytest.raises(ValueError, match=match):
        prepare_training_pairs(frame)


def test_epoch_order_is_seeded_and_drops_single_pair_tail():
    first = epoch_batches(33, 16, seed=42, epoch=0)
    assert [len(b) for b in first] == [16, 16]  # the 1-pair tail has no negative
    assert all((a == b).all() for a, b in zip(first, epoch_batches(33, 16, seed=42, epoch=0)))
    assert not all((a == b).all() for a, b in zip(first, epoch_batches(33, 16, seed=42, epoch=1)))


def _lr_factors(kind: str, total: int, warmup_ratio: float) -> list[float]:
    training = load_experiment_config(overrides={"training": {"scheduler": kind, "warmup_ratio": warmup_ratio,
                                                              "learning_rate": 1.0}}).training
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, training, total)
    factors = []
    for _ in range(total):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return factors


def test_learning_rate_schedule():
    factors = _lr_factors("cosine", 100, 0.1)  # transformers' warm-up: 0, 0.1, ..., 0.9, then cosine from 1
    assert factors[0] == 0.0 and factors[5] == pytest.approx(0.5) and factors[10] == pytest.approx(1.0)
    assert factors[99] < 0.01
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert _lr_factors("constant", 100, 0.0)[50] == 1.0
    assert _lr_factors("linear", 100, 0.0)[50] == pytest.approx(0.5)