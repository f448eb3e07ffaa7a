"""LoRA on CLIP: parameter counts of the original notebooks' ViT-B/32 setup, scopes, save/load/merge round trip,
and the saved adapters as plain peft reads them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from peft import PeftModel
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel

from clipfood_assets.modeling.clip import load_clip
from clipfood_assets.modeling.config import LoraSettings
from clipfood_assets.modeling.embed import embed_images, embed_texts
from clipfood_assets.modeling.lora import (
    LOGIT_SCALE_KEY,
    apply_adapters,
    count_parameters,
    load_adapted_model,
    logit_scale_parameter,
    lora_target_modules,
    save_adapters,
)
from clipfood_assets_tests.plain_tools import run_plain_script


def _vit_b32_on_meta() -> CLIPModel:
    # CLIPConfig() defaults are ViT-B/32; on the meta device no memory is allocated.
    with torch.device("meta"):
        return CLIPModel(CLIPConfig())


@pytest.mark.parametrize(
    "scope, lora_params",
    [("both", 983_040), ("vision", 12 * 4 * 8 * (768 + 768)), ("text", 12 * 4 * 8 * (512 + 512))],
)
def test_vit_b32_lora_parameter_counts_match_the_seed(scope, lora_params):
    base = _vit_b32_on_meta()
    assert count_parameters(base) == (151_277_313, 151_277_313)
    with torch.device("meta"):
        adapted = apply_adapters(base, LoraSettings(scope=scope))
    trainable, total = count_parameters(adapted)
    assert trainable == lora_params + 1  # + logit_scale
    assert total == 151_277_313 + lora_params
    if scope == "both":
        assert (trainable, total) == (983_041, 152_260_353)
    names = [n for n, p in adapted.named_parameters() if p.requires_grad and "lora_" in n]
    towers = {"vision_model" if "vision_model" in n else "text_model" for n in names}
    assert towers == ({"vision_model", "text_model"} if scope == "both" else {f"{scope}_model"})


def test_logit_scale_can_stay_frozen():
    with torch.device("meta"):
        adapted = apply_adapters(_vit_b32_on_meta(), LoraSettings(), train_logit_scale=False)
    assert count_parameters(adapted)[0] == 983_040


def test_unknown_target_modules_are_rejected():
    with pytest.raises(ValueError, match="no Linear layer"):
        lora_target_modules(_vit_b32_on_meta(), LoraSettings(target_modules=["query"]))


def test_save_load_merge_round_trip(tiny_model_dir, tmp_path, synthetic_data):
    torch.manual_seed(0)
    model, processor = load_clip(tiny_model_dir)
    adapted = apply_adapters(model, LoraSettings(r=4, lora_alpha=8))
    with torch.no_grad():  # lora_B starts at zero; make the adapters do something
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)
        logit_scale_parameter(adapted).fill_(3.3)
    adapted.eval()
    keys = sorted(synthetic_data.images)[:6]
    captions = ["Spicy Tomato Soup", "Banana Pancakes", "Creamy Salmon Tacos"]
    expected_images, _ = embed_images(adapted, processor, keys, synthetic_data.load_image, batch_size=4, device="cpu")
    expected_texts, _ = embed_texts(adapted, processor, captions, batch_size=4, device="cpu")
    base_images, _ = embed_images(load_clip(tiny_model_dir)[0], processor, keys, synthetic_data.load_image,
                                  batch_size=4, device="cpu")
    assert not np.allclose(base_images, expected_images, atol=1e-3)  # the adapters matter

    out = save_adapters(adapted, tmp_path / "adapters", logit_scale_parameter(adapted))
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "logit_scale.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    assert json.loads((out / "logit_scale.json").read_text())["logit_scale"] == pytest.approx(3.3)
    assert float(load_file(out / "adapter_model.safetensors")[LOGIT_SCALE_KEY]) == pytest.approx(3.3)

    for merge in (True, False):
        loaded, loaded_processor = load_adapted_model(tiny_model_dir, out, "cpu", merge=merge)
        assert isinstance(loaded, CLIPModel) == merge  # merged: a plain CLIPModel again
        images, _ = embed_images(loaded, loaded_processor, keys, synthetic_data.load_image, batch_size=4, device="cpu")
        texts, _ = embed_texts(loaded, loaded_processor, captions, batch_size=4, device="cpu")
        assert np.allclose(images, expected_images, atol=1e-5)
        assert np.allclose(texts, expected_texts, atol=1e-5)
        assert float(logit_scale_parameter(loaded)) == pytest.approx(3.3)


def test_load_adapted_model_rejects_a_directory_without_adapters(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError):
        load_adapted_model(tiny_model_dir, tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickle"):
        load_adapted_model(tiny_model_dir, tmp_path)


@pytest.mark.parametrize("method", ["lora", "dora", "loha", "lokr", "ia3"])
def test_each_peft_method_trains_a_step_and_round_trips_save_load_merge(method, tiny_model_dir, tmp_path):
    """One optimizer step changes the output; saved, loaded and merged, the model computes the same."""
    from clipfood_assets.modeling.clip import load_clip

    model, processor = load_clip(tiny_model_dir)
    adapted = apply_adapters(model, LoraSettings(r=4, lora_alpha=8, lora_dropout=0.0), method=method)
    trainable, total = count_parameters(adapted)
    assert 0 < trainable < total
    inputs = processor(text=["tomato soup", "apple pie"], images=[Image.new("RGB", (64, 64), c) for c in
                                                                  ("red", "blue")], return_tensors="pt",
                       padding=True)
    before = adapted(**inputs).logits_per_image.detach().clone()
    start_scale = logit_scale_parameter(adapted).item()
    optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=0.05)
    adapted(**inputs).logits_per_image.diagonal().sum().neg().backward()
    optimizer.step()
    adapted.eval()
    with torch.no_grad():
        after = adapted(**inputs).logits_per_image
    assert not torch.allclose(before, after)
    assert logit_scale_parameter(adapted).item() != pytest.approx(start_scale)  # the temperature trained too
    save_adapters(adapted, tmp_path / method, logit_scale_parameter(adapted))
    merged, _ = load_adapted_model(tiny_model_dir, tmp_path / method, merge=True)
    unmerged, _ = load_adapted_model(tiny_model_dir, tmp_path / method, merge=False)
    # Stock peft on a stock CLIPModel computes the same logits: the trained temperature included.
    plain = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_model_dir, use_safetensors=True),
                                      str(tmp_path / method)).eval()
    with torch.no_grad():
        assert torch.allclose(merged(**inputs).logits_per_image, after, atol=1e-4)
        assert torch.allclose(unmerged(**inputs).logits_per_image, after, atol=1e-4)
        assert torch.allclose(plain(**inputs).logits_per_image, after, atol=1e-4)


_PLAIN_PEFT = """
import torch
from PIL import Image
from peft import PeftModel
from transformers import CLIPModel, CLIPProcessor

base = CLIPModel.from_pretrained(BASE, use_safetensors=True)
base_scale = base.logit_scale.exp().item()
model = PeftModel.from_pretrained(base, ADAPTERS).eval()
processor = CLIPProcessor.from_pretrained(BASE)
inputs = processor(text=["tomato soup", "apple pie"], images=[Image.new("RGB", (64, 64), c) for c in ("red", "blue")],
                   return_tensors="pt", padding=True)
with torch.no_grad():
    logits = model(**inputs).logits_per_image
result = {"base_scale": base_scale, "scale": model.logit_scale.exp().item(), "logits": logits.tolist()}
"""


def _trained_adapters(base_dir, out_dir, log_scale: float):
    model, _ = load_clip(base_dir)
    adapted = apply_adapters(model, LoraSettings(r=4, lora_alpha=8, lora_dropout=0.0))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)
        logit_scale_parameter(adapted).fill_(log_scale)
    save_adapters(adapted, out_dir, logit_scale_parameter(adapted))
    return out_dir


def test_plain_peft_in_a_fresh_process_uses_the_trained_temperature(tiny_model_dir, tmp_path):
    trained = math.log(13.91)  # the run: the base's 14.29 (here) or 15.47 would be wrong
    adapters = _trained_adapters(tiny_model_dir, tmp_path / "adapters", trained)
    ours, processor = load_adapted_model(tiny_model_dir, adapters, merge=True)
    inputs = processor(text=["tomato soup", "apple pie"], images=[Image.new("RGB", (64, 64), c) for c in
                                                                  ("red", "blue")], return_tensors="pt",
                       padding=True)
    with torch.no_grad():
        expected = ours(**inputs).logits_per_image

    plain = run_plain_script(f"BASE, ADAPTERS = {str(tiny_model_dir)!r}, {str(adapters)!r}\n" + _PLAIN_PEFT,
                             cwd=tmp_path)
    assert plain["base_scale"] == pytest.approx(math.exp(2.6592), abs=1e-3)
    assert plain["scale"] == pytest.approx(13.91, abs=1e-4)
    assert torch.allclose(torch.tensor(plain["logits"]), expected, atol=1e-5)


def test_adapters_saved_with_only_logit_scale_json_still_load_with_their_temperature(tiny_model_dir, tmp_path):
    """A run trained before the temperature was in the adapter file: our loader reads logit_scale.json."""
    adapters = _trained_adapters(tiny_model_dir, tmp_path / "adapters", 3.3)
    weights = adapters / "adapter_model.safetensors"
    tensors = load_file(weights)
    del tensors[LOGIT_SCALE_KEY]
    save_file(tensors, weights, metadata={"format": "pt"})

    for merge in (True, False):
        loaded, _ = load_adapted_model(tiny_model_dir, adapters, merge=merge)
        assert logit_scale_parameter(loaded).item() == pytest.approx(3.3)
    plain = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_model_dir, use_safetensors=True), str(adapters))
    assert plain.logit_scale.item() == pytest.approx(2.6592, abs=1e-4)  # what such a file gave stock peft


def test_an_unknown_method_and_qlora_without_cuda_are_refused_clearly():
    from clipfood_assets.modeling.lora import check_quantization

    with pytest.raises(ValueError, match="unknown peft method 'vera'"):
        apply_adapters(_vit_b32_on_meta(), LoraSettings(), method="vera")
    check_quantization("none", "cpu")
    with pytest.raises(ValueError, match=r"peft.quantization: 4bit \(QLoRA\) needs a CUDA GPU"):
        check_quantization("4bit", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs CUDA (and bitsandbytes)")
def test_qlora_trains_on_cuda(tiny_model_dir):
    from clipfood_assets.modeling.lora import load_quantized_clip

    model = load_quantized_clip(str(tiny_model_dir), "cuda")
    adapted = apply_adapters(model, LoraSettings(r=4), method="lora")
    assert 0 < count_parameters(adapted)[0]
