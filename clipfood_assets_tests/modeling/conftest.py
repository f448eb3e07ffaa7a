"""Fixtures for the modeling tests: random tiny CLIPs and a saved tiny base model."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
from transformers import CLIPConfig, CLIPModel


def random_clip(dropout: float = 0.0, image_size: int = 32) -> CLIPModel:
    """A randomly initialised CLIP small enough for gradient checks (ids < 100, eos 99)."""
    config = CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, attention_dropout=dropout,
                         bos_token_id=98, eos_token_id=99, pad_token_id=99),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8, attention_dropout=dropout),
        projection_dim=16,
    )
    return CLIPModel(config).to(torch.float32)


@pytest.fixture(autouse=True)
def single_torch_thread(monkeypatch):
    """One intra-op thread: the tiny models gain nothing from more, and on CI cores shared
    with other jobs OpenMP spin-waiting makes two threads ~30x slower."""
    from clipfood_assets.modeling.efficiency import THREADS_ENV

    previous = torch.get_num_threads()
    monkeypatch.setenv(THREADS_ENV, "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(name="random_clip")
def random_clip_factory():
    """Factory fixture: ``random_clip(dropout=0.0, image_size=32)``."""
    return random_clip


# --------------------------------------------------------------------------- saved tiny model + data


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The offline base CLIP (hidden 64, 2 layers, 64 px, real BPE tokenizer), untrained."""
    from clipfood_assets.modeling.base_model import build_base_model

    return build_base_model(tmp_path_factory.mktemp("base_model") / "tiny_clip", seed=0, pretrain_steps=0)


@dataclass(frozen=True)
class SyntheticData:
    images: dict[str, bytes]
    test_pairs: pd.DataFrame
    train_pairs: pd.DataFrame  # with label 1 positives and label 0 labelled negatives

    def load_image(self, key: str) -> bytes:
        return self.images[key]


def _recipe_of(key: str) -> str:
    return key.rsplit("__", 1)[1].rsplit("_", 1)[0]


@pytest.fixture(scope="session")
def synthetic_data() -> SyntheticData:
    """~40 synthetic recipes: every 5th recipe is a test recipe, the rest train (with negatives)."""
    from clipfood_assets.synthetic import synthetic_trusted_zone

    recipes_jsonl, image_iter = synthetic_trusted_zone(40, seed=7)
    titles = {r["id"]: r["title_text_raw"] for r in map(json.loads, recipes_jsonl.decode().splitlines())}
    images = dict(image_iter)
    pairs = pd.DataFrame({"image_key": sorted(images)})
    pairs["recipe_id"] = pairs["image_key"].map(_recipe_of)
    pairs["caption"] = pairs["recipe_id"].map(titles)
    recipe_order = sorted(titles)
    test_recipes = set(recipe_order[::5])
    test = pairs[pairs["recipe_id"].isin(test_recipes)].reset_index(drop=True)[["recipe_id", "image_key", "caption"]]
    train = pairs[~pairs["recipe_id"].isin(test_recipes)].reset_index(drop=True)
    train_recipes = sorted(set(train["recipe_id"]))
    other = {r: train_recipes[(i + 1) % len(train_recipes)] for i, r in enumerate(train_recipes)}
    negatives = train.assign(caption=train["recipe_id"].map(other).map(titles), label=0)
    labelled = pd.concat([train.assign(label=1), negatives], ignore_index=True)
    labelled["augmentation"] = "none"
    labelled["source_image_key"] = labelled["image_key"]
    return SyntheticData(images=images, test_pairs=test, train_pairs=labelled)
