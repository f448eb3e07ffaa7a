"""Checkpoints: safetensors + JSON only, exact restore of optimizer/scheduler/RNG, COMPLETE marker."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from clipfood_assets.modeling.checkpoint import (
    checkpoint_steps,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def _setup(seed=0):
    torch.manual_seed(seed)
    weights = {"a.lora_A": torch.nn.Parameter(torch.randn(4, 3)), "logit_scale": torch.nn.Parameter(torch.tensor(2.0))}
    optimizer = torch.optim.AdamW([{"params": [weights["a.lora_A"]], "weight_decay": 0.1},
                                   {"params": [weights["logit_scale"]], "weight_decay": 0.0}], lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    return weights, optimizer, scheduler


def _step(weights, optimizer, scheduler):
    loss = (weights["a.lora_A"] ** 2).sum() * weights["logit_scale"]
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_round_trip_restores_training_exactly(tmp_path):
    weights, optimizer, scheduler = _setup()
    for _ in range(3):
        _step(weights, optimizer, scheduler)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = save_checkpoint(tmp_path, 3, trainable=weights, optimizer=optimizer, scheduler=scheduler,
                           state={"epoch": 1, "batch_in_epoch": 2, "logs": {"steps": [{"loss": 0.5}]}})
    assert {p.name for p in path.iterdir()} == {"trainable.safetensors", "optimizer.safetensors",
                                                "rng.safetensors", "state.json", "COMPLETE"}
    expected_draws = (random.random(), np.random.rand(), torch.rand(1))
    _step(weights, optimizer, scheduler)
    expected_weights = {k: v.detach().clone() for k, v in weights.items()}

    fresh, fresh_optimizer, fresh_scheduler = _setup(seed=99)
    state = load_checkpoint(path, trainable=fresh, optimizer=fresh_optimizer, scheduler=fresh_scheduler)
    assert state == {"epoch": 1, "batch_in_epoch": 2, "logs": {"steps": [{"loss": 0.5}]}}
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected_draws
    assert fresh_scheduler.last_epoch == 3
    _step(fresh, fresh_optimizer, fresh_scheduler)
    for name, value in expected_weights.items():
        assert torch.equal(fresh[name].detach(), value), name


def test_latest_checkpoint_ignores_incomplete_and_foreign_directories(tmp_path):
    weights, optimizer, scheduler = _setup()
    assert latest_checkpoint(tmp_path / "missing") is None
    save_checkpoint(tmp_path, 2, trainable=weights, optimizer=optimizer, scheduler=scheduler, state={})
    (tmp_path / "step_9").mkdir()  # crashed mid-write: no COMPLETE
    (tmp_path / "step_9" / "state.json").write_text("{")
    (tmp_path / "step_x").mkdir()
    (tmp_path / "notes.txt").write_text("hi")
    assert latest_checkpoint(tmp_path) == tmp_path / "step_2"
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "step_9", trainable=weights, optimizer=optimizer, scheduler=scheduler)


def test_keep_prunes_old_checkpoints(tmp_path):
    weights, optimizer, scheduler = _setup()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, trainable=weights, optimizer=optimizer, scheduler=scheduler,
                        state={}, keep=2)
    assert [s for s, _ in checkpoint_steps(tmp_path)] == [3, 4]


def test_checkpoint_of_another_model_is_rejected(tmp_path):
    weights, optimizer, scheduler = _setup()
    path = save_checkpoint(tmp_path, 1, trainable=weights, optimizer=optimizer, scheduler=scheduler, state={})
    other = {"b.lora_A": torch.nn.Parameter(torch.zeros(4, 3)), "logit_scale": torch.nn.Parameter(torch.tensor(1.0))}
    with pytest.raises(ValueError, match="does not match"):
        load_checkpoint(path, trainable=other, optimizer=optimizer, scheduler=scheduler)
    wrong_shape = {"a.lora_A": torch.nn.Parameter(torch.zeros(2, 3)), "logit_scale": weights["logit_scale"]}
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint(path, trainable=wrong_shape, optimizer=optimizer, scheduler=scheduler)
