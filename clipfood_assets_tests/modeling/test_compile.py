"""Compiled towers never fall back to eager silently: a run's graphs are counted with dynamo's own
counters, and running out of room for graphs is an error.

Compiled with dynamo's "eager" backend: the graphs, guards and recompiles are dynamo's whatever the
backend; inductor would add minutes of kernel generation on this CPU and nothing to count."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from clipfood_assets.modeling import clip
from clipfood_assets.modeling.base_model import build_base_model
from clipfood_assets.modeling.config import load_experiment_config
from clipfood_assets.modeling.evaluate import evaluate_retrieval
from clipfood_assets.modeling.lora import load_adapted_model
from clipfood_assets.modeling.train import train_lora


@pytest.fixture
def eager_dynamo(monkeypatch):
    """Compile with the eager backend from a clean dynamo cache and counters."""
    monkeypatch.setattr(clip, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def one_layer_model_dir(tmp_path_factory):
    """The tiny offline CLIP with one layer per tower: tracing costs per layer, the count does not."""
    return build_base_model(tmp_path_factory.mktemp("one_layer") / "clip", seed=0, layers=1)


def _fallbacks() -> int:
    """Frames dynamo gave up on (run eager) plus recompile-limit hits."""
    return counters["frames"]["total"] - counters["frames"]["ok"] + sum(
        n for reason, n in counters["unimplemented"].items() if "recompile limit" in reason.lower())


def test_a_compiled_run_and_its_evaluation_make_a_known_number_of_graphs(eager_dynamo, one_layer_model_dir,
                                                                          synthetic_data, tmp_path):
    # 78 pairs: 4 steps of 16 and a short one of 14, each in micro-batches of 8 (the feature cache's
    # no-grad pass, then the replay with grad); captions of several lengths; 13 validation images.
    cfg = load_experiment_config(overrides={
        "training": {"epochs": 2, "batch_size": 8, "effective_batch_size": 16, "compile": "on", "precision": "fp32",
                     "checkpoint_every_steps": 1000, "final_adapters": "last"},
        "evaluation": {"batch_size": 16}})
    positives = synthetic_data.train_pairs[synthetic_data.train_pairs["label"] == 1]
    result = train_lora(str(one_layer_model_dir), positives, synthetic_data.load_image, cfg, device="cpu",
                        work_dir=tmp_path, validation_pairs=synthetic_data.test_pairs)
    assert result.training_logs["compiled"] is True
    # Per tower: training with grad and the feature cache's first pass without. No shape recompiles: the
    # batch, the caption length and the short last step are one graph. Validation (compile auto, a small
    # set) ran eager: no graphs for it.
    assert counters["stats"]["unique_graphs"] == 4
    assert len(result.training_logs["validation"]) == 2

    evaluation = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"compile": "on"})})
    model, processor = load_adapted_model(one_layer_model_dir, result.adapter_dir, merge=False)
    evaluate_retrieval(model, processor, synthetic_data.test_pairs, synthetic_data.load_image, cfg=evaluation,
                       device="cpu", label="M1")
    assert counters["stats"]["unique_graphs"] == 6  # another model: one evaluation graph per tower
    fewer = synthetic_data.test_pairs.head(9)  # other gallery and batch sizes, the same graphs
    evaluate_retrieval(model, processor, fewer, synthetic_data.load_image, cfg=evaluation, device="cpu", label="M1")
    assert counters["stats"]["unique_graphs"] == 6
    assert _fallbacks() == 0 and not counters["graph_break"], dict(counters)


def test_running_out_of_room_for_graphs_is_an_error(eager_dynamo, monkeypatch, random_clip):
    monkeypatch.setattr(clip, "RECOMPILE_LIMIT", 2)
    model = random_clip()
    clip.compile_towers(model)
    pixels = clip.dynamic_rows(torch.randn(8, 3, 32, 32))

    def embed():
        with clip.compiled_region("this test"):
            return model.get_image_features(pixel_values=pixels)

    model.train()
    embed()  # graph 1 of the shared wrapper: training mode, grad
    with torch.no_grad():
        embed()  # graph 2: no grad
    model.eval()
    with pytest.raises(RuntimeError, match="ran out of room for graphs in this test"):
        embed()  # a third would have run eager without a word
    assert torch._dynamo.config.recompile_limit == 8  # the room was the region's, not the process's
