"""Saved files name the base model as another machine can load it: the hub id for a copy of a Hub model,
the folder only for a model that is not on the Hub."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from clipfood_assets.modeling.clip import load_clip
from clipfood_assets.modeling.config import LoraSettings
from clipfood_assets.modeling.hub import BaseModelSource, base_model_source
from clipfood_assets.modeling.lora import apply_adapters, load_adapted_model, logit_scale_parameter, save_adapters
from clipfood_assets_tests.plain_tools import COMMIT, HUB_ID, hub_cache, local_copy, run_plain_script

def test_which_hub_model_a_base_model_is(tiny_model_dir, tmp_path):
    snapshot = hub_cache(tmp_path / "hub", tiny_model_dir)
    assert base_model_source(snapshot) == BaseModelSource(str(snapshot), HUB_ID, COMMIT)
    copy = local_copy(tmp_path / "copy", tiny_model_dir)
    assert base_model_source(copy) == BaseModelSource(str(copy), HUB_ID)
    assert base_model_source(HUB_ID).portable_name == HUB_ID
    # Not copies of a Hub model: they keep their folder.
    fine_tune = local_copy(tmp_path / "fine-tune", tiny_model_dir, card=f"---\nbase_model: {HUB_ID}\n---\n# mine\n")
    saved_from_a_folder = local_copy(tmp_path / "from-folder", tiny_model_dir, name_or_path=str(tmp_path / "x"))
    for folder in (tiny_model_dir, fine_tune, saved_from_a_folder):
        source = base_model_source(folder)
        assert (source.hub_id, source.portable_name) == (None, str(folder))


def _adapters(base_dir, out_dir):
    model, _ = load_clip(base_dir)
    adapted = apply_adapters(model, LoraSettings(r=4, lora_alpha=8, lora_dropout=0.0))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)
        logit_scale_parameter(adapted).fill_(2.9)
    return save_adapters(adapted, out_dir, logit_scale_parameter(adapted))


_ANOTHER_MACHINE = """
import torch
from PIL import Image
from peft import AutoPeftModel, PeftConfig, PeftModel
from transformers import CLIPModel, CLIPProcessor

config = PeftConfig.from_pretrained(ADAPTERS)
base = CLIPModel.from_pretrained(config.base_model_name_or_path, revision=config.revision, use_safetensors=True)
by_hand = PeftModel.from_pretrained(base, ADAPTERS).eval()
auto = AutoPeftModel.from_pretrained(ADAPTERS).eval()
processor = CLIPProcessor.from_pretrained(config.base_model_name_or_path, revision=config.revision)
inputs = processor(text=["tomato soup", "apple pie"], images=[Image.new("RGB", (64, 64), c) for c in ("red", "blue")],
                   return_tensors="pt", padding=True)
with torch.no_grad():
    result = {"base": config.base_model_name_or_path, "revision": config.revision,
              "by_hand": by_hand(**inputs).logits_per_image.tolist(), "auto": auto(**inputs).logits_per_image.tolist()}
"""


@pytest.mark.parametrize("layout", ["hub cache", "local copy"])
def test_adapters_trained_on_a_copy_of_a_hub_model_load_elsewhere_by_its_hub_id(layout, tiny_model_dir, tmp_path):
    """Trained on this machine's copy, which is then gone; another machine's Hub cache has the model."""
    if layout == "hub cache":
        base, revision = hub_cache(tmp_path / "this-machine", tiny_model_dir), COMMIT
    else:
        base, revision = local_copy(tmp_path / "this-machine", tiny_model_dir), None
    adapters = _adapters(base, tmp_path / "adapters")
    config = json.loads((adapters / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == (HUB_ID, revision)
    ours, processor = load_adapted_model(base, adapters)
    inputs = processor(text=["tomato soup", "apple pie"], images=[Image.new("RGB", (64, 64), c) for c in
                                                                  ("red", "blue")], return_tensors="pt",
                       padding=True)
    with torch.no_grad():
        expected = ours(**inputs).logits_per_image
    shutil.rmtree(tmp_path / "this-machine")
    hub_cache(tmp_path / "other-machine", tiny_model_dir)

    elsewhere = run_plain_script(f"ADAPTERS = {str(adapters)!r}\n" + _ANOTHER_MACHINE, cwd=tmp_path,
                                 env={"HF_HUB_CACHE": str(tmp_path / "other-machine")})
    assert (elsewhere["base"], elsewhere["revision"]) == (HUB_ID, revision)
    for loaded in ("by_hand", "auto"):
        assert torch.allclose(torch.tensor(elsewhere[loaded]), expected, atol=1e-5), loaded


def test_adapters_of_a_model_that_is_not_on_the_hub_name_its_folder(tiny_model_dir, tmp_path):
    config = json.loads((_adapters(tiny_model_dir, tmp_path / "adapters") / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == (str(tiny_model_dir), None)


def test_the_adapters_card_is_a_hub_card_with_the_base_models_license(tiny_model_dir, tmp_path):
    copy = local_copy(tmp_path / "copy", tiny_model_dir, card="---\nlicense: apache-2.0\n---\n# the base\n")
    card = ModelCard.load(_adapters(copy, tmp_path / "adapters") / "README.md")
    assert (card.data.base_model, card.data.library_name, card.data.license) == (HUB_ID, "peft", "apache-2.0")
    assert card.data.base_model_relation == "adapter" and {"clip", "peft", "lora"} <= set(card.data.tags)
    assert card.data.eval_results is None  # written when training ends: no test metrics yet, and it says so
    assert "results_lora.json" in card.text and f'CLIPModel.from_pretrained("{HUB_ID}"' in card.text

    offline = ModelCard.load(_adapters(tiny_model_dir, tmp_path / "offline") / "README.md")
    assert (offline.data.base_model, offline.data.license) == (None, None)  # not a Hub model, no license
    assert f"`{tiny_model_dir}` on the training machine (not a Hub model)" in offline.text
