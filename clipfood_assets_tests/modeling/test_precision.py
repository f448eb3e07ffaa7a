"""bf16 where it is safe, fp32 where it matters: the temperature is never rounded, validation and the test
evaluation compute the same embeddings of the same adapters, and retrieval under bf16 autocast agrees
with fp32. bf16 runs on the CPU here (slowly, so the model and data are tiny): the layout is the CUDA one."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from clipfood_assets.modeling.clip import load_clip
from clipfood_assets.modeling.config import load_experiment_config
from clipfood_assets.modeling.embed import embed_images, embed_texts
from clipfood_assets.modeling.evaluate import evaluate_retrieval, prepare_for_inference
from clipfood_assets.modeling.lora import load_adapted_model, logit_scale_parameter
from clipfood_assets.modeling.train import _load_trainable_clip, train_lora

CPU = torch.device("cpu")
# A pretrained CLIP's log inverse temperature (log 100), and what one bf16 round trip makes of it.
PRETRAINED_LOGIT_SCALE, BF16_ROUNDED = 4.6052, 4.59375


def _cfg(precision: str, **training):
    base = {"epochs": 1, "batch_size": 8, "effective_batch_size": 16, "learning_rate": 5e-3, "warmup_ratio": 0.0,
            "checkpoint_every_steps": 1000, "precision": precision, "final_adapters": "last", "num_workers": 2}
    return load_experiment_config(overrides={"training": base | training, "evaluation": {"precision": precision}})


@pytest.fixture(scope="module")
def few_recipes(synthetic_data) -> pd.DataFrame:
    """The labelled training rows of 16 recipes: enough to learn from in seconds."""
    rows = synthetic_data.train_pairs
    return rows[rows["recipe_id"].isin(sorted(set(rows["recipe_id"]))[:16])].reset_index(drop=True)


@pytest.fixture(scope="module")
def pretrained_scale_base(tiny_model_dir, tmp_path_factory):
    """The tiny base model with a pretrained CLIP's logit_scale."""
    model, processor = load_clip(tiny_model_dir)
    with torch.no_grad():
        model.logit_scale.fill_(PRETRAINED_LOGIT_SCALE)
    out = tmp_path_factory.mktemp("scaled_base")
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def bf16_run(pretrained_scale_base, few_recipes, synthetic_data, tmp_path_factory):
    """One bf16 epoch on the CPU with validation on the test pairs; the temperature is frozen."""
    return train_lora(str(pretrained_scale_base), few_recipes, synthetic_data.load_image,
                      _cfg("bf16", train_logit_scale=False), device="cpu", work_dir=tmp_path_factory.mktemp("bf16_run"),
                      validation_pairs=synthetic_data.test_pairs)


def test_the_bf16_layout_keeps_the_temperature_and_adapters_in_fp32(pretrained_scale_base, bf16_run):
    assert torch.tensor(PRETRAINED_LOGIT_SCALE).bfloat16().item() == BF16_ROUNDED  # what the old cast did
    model, _, frozen_dtype = _load_trainable_clip(str(pretrained_scale_base), _cfg("bf16"), CPU, "bf16")
    scale = logit_scale_parameter(model)
    assert scale.dtype == torch.float32 and scale.item() == torch.tensor(PRETRAINED_LOGIT_SCALE).item()
    assert frozen_dtype == torch.bfloat16
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    adapters = {name for name in dtypes if "lora_" in name}
    assert adapters and all(dtypes[name] == torch.float32 for name in adapters)
    assert all(dtype == torch.bfloat16 for name, dtype in dtypes.items()
               if name not in adapters and not name.endswith("logit_scale"))
    # The run trained in that layout and saved its (frozen) temperature to the last bit: CLIP's clamp at a
    # scale of 100 (4.6052 is a hair above log 100) is the only change.
    loaded, _ = load_adapted_model(pretrained_scale_base, bf16_run.adapter_dir, merge=False)
    assert logit_scale_parameter(loaded).item() == torch.tensor(math.log(100)).item()
    assert bf16_run.training_logs["frozen_weights_dtype"] == "bfloat16"


def _embeddings(model, processor, pairs: pd.DataFrame, load_image) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(set(pairs["image_key"]))
    images, _ = embed_images(model, processor, keys, load_image, batch_size=8, device="cpu", precision="bf16")
    texts, _ = embed_texts(model, processor, sorted(set(pairs["caption"])), batch_size=8, device="cpu",
                           precision="bf16")
    return images, texts


def test_validation_and_the_test_evaluation_compute_the_same_embeddings(pretrained_scale_base, bf16_run,
                                                                         synthetic_data):
    base, pairs, load_image = str(pretrained_scale_base), synthetic_data.test_pairs, synthetic_data.load_image
    cfg = _cfg("bf16")
    # Validation's model: the training layout with the trained adapters in it.
    trained, processor, _ = _load_trainable_clip(base, cfg, CPU, "bf16")
    saved, _ = load_adapted_model(base, bf16_run.adapter_dir, merge=False)
    weights = dict(saved.named_parameters())
    with torch.no_grad():
        for name, parameter in trained.named_parameters():
            if parameter.requires_grad:
                parameter.copy_(weights[name])
    with torch.no_grad():
        validation = _embeddings(trained.eval(), processor, pairs, load_image)
    # The test evaluation's model: the saved adapters, unmerged, prepared as evaluate_retrieval does.
    tested = _embeddings(prepare_for_inference(saved, cfg.evaluation, CPU, len(pairs)), processor, pairs, load_image)
    for seen_by_validation, seen_by_test in zip(validation, tested, strict=True):
        np.testing.assert_array_equal(seen_by_validation, seen_by_test)
    # The old test path (delta merged in fp32, then everything cast to bf16) computes other embeddings.
    merged, _ = load_adapted_model(base, bf16_run.adapter_dir, merge=True)
    old = _embeddings(merged.to(torch.bfloat16), processor, pairs, load_image)
    assert not np.array_equal(old[0], validation[0])

    # And end to end: the metrics the run logged for its last validation are the test evaluation's.
    results, _ = evaluate_retrieval(load_adapted_model(base, bf16_run.adapter_dir, merge=False)[0], processor, pairs,
                                    load_image, cfg=cfg, device="cpu", label="M1")
    assert results["metrics"] == bf16_run.training_logs["validation"][-1]["metrics"]


def test_retrieval_under_bf16_autocast_agrees_with_fp32(tiny_model_dir, few_recipes, synthetic_data, tmp_path):
    """The tolerance: R@1 within one query and MRR within 0.02 each way, and at least 80 % of the
    queries keep their first-hit rank (measured: R@1 equal both ways, MRR 0.460 vs 0.449 and 0.452 vs
    0.452, 88 % and 95 % of the ranks unchanged)."""
    pairs = few_recipes[few_recipes["label"] == 1][["recipe_id", "image_key", "caption"]].reset_index(drop=True)
    # Adapters half way to memorising these pairs (R@1 about 0.3): ranks that a rounding error could move.
    run = train_lora(str(tiny_model_dir), pairs, synthetic_data.load_image, _cfg("fp32", epochs=8, batch_size=16),
                     device="cpu", work_dir=tmp_path)
    results = {}
    for precision in ("fp32", "bf16"):
        model, processor = load_adapted_model(tiny_model_dir, run.adapter_dir, merge=False)
        results[precision], _ = evaluate_retrieval(model, processor, pairs, synthetic_data.load_image,
                                                   cfg=_cfg(precision), device="cpu", label=precision)
    for direction in ("text_to_image", "image_to_text"):
        fp32, bf16 = (results[p]["metrics"][direction] for p in ("fp32", "bf16"))
        ranks = [np.array(results[p]["first_hit_ranks"][direction]["ranks"]) for p in ("fp32", "bf16")]
        assert fp32["R@1"] >= 0.2, fp32  # the adapters retrieve: comparing chance levels would say little
        assert abs(bf16["R@1"] - fp32["R@1"]) <= 1 / len(ranks[0]) + 1e-9, (direction, fp32, bf16)
        assert abs(bf16["MRR"] - fp32["MRR"]) <= 0.02, (direction, fp32, bf16)
        assert np.mean(ranks[0] == ranks[1]) >= 0.8, direction
