"""Gradient checkpointing leaves the training step unchanged; the preprocessing signature
names every setting that changes the pixels."""

from __future__ import annotations

import pytest
import torch

from clipfood_assets.modeling.clip import load_clip
from clipfood_assets.modeling.config import LoraSettings
from clipfood_assets.modeling.embed import ImagePreprocessor
from clipfood_assets.modeling.lora import apply_adapters, logit_scale_parameter
from clipfood_assets.modeling.losses import FeatureCacheAccumulator, contrastive_loss
from clipfood_assets.modeling.train import enable_gradient_checkpointing


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_clip(tiny_model_dir)


def test_preprocessing_settings_change_the_signature(tiny):
    processor = tiny[1]
    plain = ImagePreprocessor(processor).signature()
    assert plain == ImagePreprocessor(processor).signature()
    assert plain != ImagePreprocessor(processor, fast_jpeg_decode=True).signature()
    processor.image_processor.size = {"shortest_edge": 48}
    try:
        assert plain != ImagePreprocessor(processor).signature()
    finally:
        processor.image_processor.size = {"shortest_edge": plain["shortest_edge"]}


def _lora_step(random_clip, checkpointing: bool) -> tuple[float, dict[str, torch.Tensor], int]:
    torch.manual_seed(0)
    model = random_clip(dropout=0.2)
    if checkpointing:
        enable_gradient_checkpointing(model)
    layer_calls = []
    mlp = model.vision_model.encoder.layers[0].mlp
    forward = mlp.forward

    def counted_forward(*args, **kwargs):  # module hooks do not fire on the backward replay; this does
        layer_calls.append(1)
        return forward(*args, **kwargs)

    mlp.forward = counted_forward
    model = apply_adapters(model, LoraSettings(r=4, lora_dropout=0.1)).train()
    logit_scale = logit_scale_parameter(model)
    generator = torch.Generator().manual_seed(1)
    micros = [
        {"pixels": torch.randn(3, 3, 32, 32, generator=generator),
         "ids": torch.randint(0, 98, (3, 6), generator=generator), "recipes": [f"r{i}", f"r{i + 1}", f"r{i + 2}"]}
        for i in (0, 3)
    ]
    for micro in micros:
        micro["ids"][:, -1] = 99  # eos ends every caption

    def encode(micro):
        image = model.get_image_features(pixel_values=micro["pixels"]).pooler_output
        text = model.get_text_features(input_ids=micro["ids"]).pooler_output
        return {"image": image, "text": text}

    def loss_fn(features, batch):
        recipes = [r for m in batch for r in m["recipes"]]
        return contrastive_loss(features["image"], features["text"], logit_scale, recipe_ids=recipes, kind="clip")

    torch.manual_seed(2)  # same dropout stream for both runs
    loss = FeatureCacheAccumulator(encode, loss_fn).accumulate(micros)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return float(loss), grads, len(layer_calls)


def test_gradient_checkpointing_gives_the_same_step(random_clip):
    plain_loss, plain, plain_calls = _lora_step(random_clip, checkpointing=False)
    checkpointed_loss, checkpointed, checkpointed_calls = _lora_step(random_clip, checkpointing=True)
    assert checkpointed_calls > plain_calls  # the layer really was recomputed in backward
    assert plain_loss == pytest.approx(checkpointed_loss, rel=1e-6)
    assert plain.keys() == checkpointed.keys() and any("lora_" in n for n in plain)
    assert any(float(g.abs().sum()) > 0 for n, g in plain.items() if "vision" in n and "lora_" in n)
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], rtol=1e-5, atol=1e-7), name
