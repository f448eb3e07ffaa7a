"""The offline base CLIP: a real BPE tokenizer, the openai-style save/load path, determinism."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoTokenizer, CLIPModel, CLIPProcessor

from clipfood_assets.modeling.base_model import (
    BOS_TOKEN,
    EOS_TOKEN,
    build_base_model,
    build_clip_config,
    build_image_processor,
    pretrain_contrastive,
    train_tokenizer,
)
from clipfood_assets.synthetic import caption_corpus, generate_recipes, render_dish_image

MADE_UP_TITLES = [
    "Zucchini Quesadilla Supreme",
    "Zucchini Quesadilla Deluxe",
    "Quesadilla Zucchini Supreme",
    "Kohlrabi Okonomiyaki",
    "Qxj Blintz",
    "Crème Brûlée 2",
    "Crème Brûlée 3",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """An untrained base model, built once for this module."""
    return build_base_model(tmp_path_factory.mktemp("base") / "clip", seed=0, pretrain_steps=0)


@pytest.fixture(scope="module")
def unseen_titles() -> list[str]:
    # Another seed than the tokenizer's corpus, plus words it never saw.
    titles = sorted({r["title_text_raw"] for r in generate_recipes(150, seed=12345)})
    return titles + MADE_UP_TITLES


def test_reloaded_tokenizer_gives_distinct_ids_to_distinct_unseen_titles(built, unseen_titles):
    for tokenizer in (AutoTokenizer.from_pretrained(built), CLIPProcessor.from_pretrained(built).tokenizer):
        ids = [tuple(x) for x in tokenizer(unseen_titles)["input_ids"]]
        assert len(set(ids)) == len(unseen_titles)
        for sequence in ids:
            # bos first, eos last and nowhere else: no word fell back to the unknown (= eos) token.
            assert sequence[0] == tokenizer.bos_token_id
            assert sequence[-1] == tokenizer.eos_token_id
            assert tokenizer.eos_token_id not in sequence[1:-1]


def test_tokenizer_is_clip_like(built):
    tokenizer = AutoTokenizer.from_pretrained(built)
    assert len(tokenizer) > 100
    assert tokenizer.bos_token == BOS_TOKEN and tokenizer.eos_token == EOS_TOKEN
    assert tokenizer.model_max_length == 77
    assert tokenizer("Spicy Tomato Soup")["input_ids"] == tokenizer("spicy   TOMATO soup")["input_ids"]
    long = tokenizer(" ".join(["pancakes"] * 200), truncation=True)["input_ids"]
    assert len(long) == 77 and long[-1] == tokenizer.eos_token_id
    ids = tokenizer("banana french toast")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "banana french toast"


def test_config_special_ids_are_the_tokenizers(built):
    model = CLIPModel.from_pretrained(built, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(built)
    text_config = model.config.text_config
    assert text_config.eos_token_id == tokenizer.eos_token_id != 2  # 2 triggers transformers' legacy pooling
    assert text_config.bos_token_id == tokenizer.bos_token_id
    assert text_config.pad_token_id == tokenizer.pad_token_id
    assert text_config.vocab_size == len(tokenizer)


def test_round_trip_through_the_openai_code_path(built):
    model = CLIPModel.from_pretrained(built, use_safetensors=True).eval()
    processor = CLIPProcessor.from_pretrained(built)
    saved = load_file(built / "model.safetensors")
    state = model.state_dict()
    assert set(saved) <= set(state)
    assert all(torch.equal(saved[name], state[name]) for name in saved)

    recipe = generate_recipes(1, seed=4)[0]
    image = Image.open(io.BytesIO(render_dish_image(recipe, 1, seed=4)))
    titles = ["Spicy Tomato Soup", "Banana French Toast"]
    inputs = processor(text=titles, images=[image], padding=True, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 64, 64)
    with torch.no_grad():
        text = model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).pooler_output
        pixels = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    assert text.shape == (2, 64) and pixels.shape == (1, 64)
    # Pooling at the real eos: two different titles get different embeddings.
    assert not torch.allclose(text[0], text[1], atol=1e-4)


def test_only_safe_files_and_a_model_card(built):
    names = {p.name for p in built.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]
    card = (built / "README.md").read_text(encoding="utf-8")
    assert "seed | 0" in card and "Not pre-trained" in card
    json.loads((built / "config.json").read_text(encoding="utf-8"))


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    first = build_base_model(tmp_path / "a", seed=3, pretrain_steps=2, pretrain_recipes=12)
    second = build_base_model(tmp_path / "b", seed=3, pretrain_steps=2, pretrain_recipes=12)
    other = build_base_model(tmp_path / "c", seed=4, pretrain_steps=0)
    a, b, c = (load_file(p / "model.safetensors") for p in (first, second, other))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert any(not torch.equal(a[name], c[name]) for name in a if a[name].shape == c[name].shape)
    assert "Pre-trained for 2 steps" in (first / "README.md").read_text(encoding="utf-8")


def test_pretraining_lowers_the_contrastive_loss():
    tokenizer = train_tokenizer(caption_corpus(seed=1, n=500), vocab_size=1024)
    torch.manual_seed(0)
    model = CLIPModel(build_clip_config(tokenizer, hidden_size=32, layers=1, image_size=32))
    processor = CLIPProcessor(image_processor=build_image_processor(32), tokenizer=tokenizer)
    losses = pretrain_contrastive(model, processor, steps=25, seed=5, batch_size=16, n_recipes=16)
    assert len(losses) == 25
    assert sum(losses[-5:]) / 5 < 0.7 * losses[0]
    assert not model.training


@pytest.mark.parametrize("vocab_size", [10, 300])
def test_tokenizer_refuses_a_vocabulary_too_small_for_the_byte_alphabet(vocab_size):
    with pytest.raises(ValueError):
        train_tokenizer(["tomato soup"], vocab_size=vocab_size)


def test_tokenizer_refuses_an_empty_corpus():
    with pytest.raises(ValueError):
        train_tokenizer([])


def test_tokenizer_vocabulary_respects_the_bound():
    tokenizer = train_tokenizer(caption_corpus(seed=0, n=2000), vocab_size=600)
    assert len(tokenizer) <= 600
    # Every byte, bare and ending a word, is present: CLIP's layout.
    vocab = tokenizer.get_vocab()
    assert "a" in vocab and "a</w>" in vocab and "Ġ</w>" in vocab


def test_negative_pretrain_steps_are_refused(tmp_path):
    with pytest.raises(ValueError):
        build_base_model(tmp_path / "x", pretrain_steps=-1)
