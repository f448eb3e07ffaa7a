"""Model loading, image/text embedding and the retrieval evaluation protocol on the tiny CLIP."""

from __future__ import annotations

import io
import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from clipfood_assets.data.decode import decode_rgb
from clipfood_assets.modeling.clip import (
    autocast_context,
    load_clip,
    resolve_device,
    resolve_precision,
    towers_compiled,
)
from clipfood_assets.modeling.config import load_experiment_config
from clipfood_assets.modeling.embed import ImagePreprocessor, embed_images, embed_texts, iter_source_batches
from clipfood_assets.modeling.evaluate import (
    compare_to_baseline,
    compile_pays,
    evaluate_retrieval,
    prepare_for_inference,
)
from clipfood_assets.modeling.metrics import first_hit_ranks


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_clip(tiny_model_dir)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _reference_pixels(processor, data: bytes) -> torch.Tensor:
    # The platform's one decoder (alpha on its fixed background), then the processor's own resizing.
    return processor(images=decode_rgb(data), return_tensors="pt")["pixel_values"][0]


def test_image_preprocessing_matches_the_processor(tiny, synthetic_data):
    _, processor = tiny
    preprocessor = ImagePreprocessor(processor)
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 255, (90, 170, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 255, (70, 50, 4), dtype=np.uint8), mode="RGBA")
    samples = [next(iter(synthetic_data.images.values())), _encode(wide, "PNG"), _encode(rgba, "PNG")]
    for data in samples:
        ours = preprocessor.normalize(preprocessor.to_uint8(data)[None])[0]
        assert ours.shape == (3, 64, 64)
        assert torch.allclose(ours, _reference_pixels(processor, data), atol=1e-5)


def test_fast_jpeg_decode_stays_close_to_the_exact_pixels(tiny, synthetic_data):
    _, processor = tiny
    exact, fast = ImagePreprocessor(processor), ImagePreprocessor(processor, fast_jpeg_decode=True)
    for data in list(synthetic_data.images.values())[:3]:
        a, b = exact.to_uint8(data).float(), fast.to_uint8(data).float()
        assert a.shape == b.shape
        assert 0 < (a - b).abs().mean() < 3  # reduced-scale decoding really happened, a few levels off
    png = _encode(Image.new("RGB", (512, 300), (10, 200, 30)), "PNG")
    assert torch.equal(exact.to_uint8(png), fast.to_uint8(png))  # only JPEGs have DCT scaling


def test_exif_orientation_is_applied(tiny):
    _, processor = tiny
    image = Image.new("RGB", (120, 60), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 60, 60))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    uint8 = ImagePreprocessor(processor).to_uint8(data)
    # Displayed upright the picture is tall: blue on top, red below.
    top, bottom = uint8[:, 5, 32].tolist(), uint8[:, 58, 32].tolist()
    assert top[2] > 200 and top[0] < 60
    assert bottom[0] > 200 and bottom[2] < 60


def test_embed_images_is_ordered_normalised_and_batch_independent(tiny, synthetic_data):
    model, processor = tiny
    keys = sorted(synthetic_data.images)[:11]
    small, stats = embed_images(model, processor, keys, synthetic_data.load_image, batch_size=3, device="cpu", workers=2)
    large, _ = embed_images(model, processor, keys, synthetic_data.load_image, batch_size=32, device="cpu")
    assert small.dtype == np.float32 and small.shape == (11, model.config.projection_dim)
    assert np.allclose(np.linalg.norm(small, axis=1), 1.0, atol=1e-5)
    assert np.allclose(small, large, atol=1e-5)
    single, _ = embed_images(model, processor, keys[5:6], synthetic_data.load_image, batch_size=1, device="cpu")
    assert np.allclose(single[0], small[5], atol=1e-5)
    assert stats.items == 11 and stats.items_per_s > 0 and stats.peak_memory_bytes > 0
    assert stats.peak_memory_kind == "process_peak_rss"


def test_embed_images_names_the_broken_image(tiny, synthetic_data):
    model, processor = tiny
    images = dict(synthetic_data.images)
    images["images/broken__x_1.jpg"] = b"\xff\xd8 not a jpeg"
    keys = sorted(synthetic_data.images)[:4] + ["images/broken__x_1.jpg"]
    with pytest.raises(ValueError, match="broken__x_1"):
        embed_images(model, processor, keys, images.__getitem__, batch_size=2, device="cpu")
    empty, stats = embed_images(model, processor, [], images.__getitem__, batch_size=2, device="cpu")
    assert empty.shape == (0, model.config.projection_dim) and stats.items == 0


def test_embed_texts_pads_per_batch_and_truncates(tiny):
    model, processor = tiny
    short = "Spicy Tomato Soup"
    long = "Creamy Roasted Garlic Chicken and Mushroom Pasta Bake with Fresh Herbs"
    alone, _ = embed_texts(model, processor, [short], batch_size=8, device="cpu")
    together, _ = embed_texts(model, processor, [long, short], batch_size=8, device="cpu")
    assert np.allclose(alone[0], together[1], atol=1e-5)  # padding does not leak into the embedding
    assert not np.allclose(together[0], together[1], atol=1e-3)
    very_long, _ = embed_texts(model, processor, [" ".join(["tomato"] * 300)], batch_size=8, device="cpu")
    assert very_long.shape == (1, model.config.projection_dim) and np.isfinite(very_long).all()


def test_load_clip_refuses_pickle_checkpoints(tiny_model_dir, tmp_path):
    copy = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "model.safetensors").rename(copy / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle"):
        load_clip(copy)
    with pytest.raises(ValueError, match="is a file"):
        load_clip(copy / "config.json")


def test_load_clip_offline_hub_id_explains_local_model(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match=r"Could not load CLIP model .*clipfood base-model --use"):
        load_clip("openai/clip-vit-base-patch32")


def test_devices_and_precision_on_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_precision("cpu", "auto") == "fp32"
    assert resolve_precision("cpu", "bf16") == "bf16"
    with pytest.raises(ValueError):
        resolve_precision("cpu", "int4")
    with autocast_context("cpu", "auto"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


# --------------------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def eval_cfg():
    return load_experiment_config(overrides={"evaluation": {"bootstrap_samples": 200, "num_examples": 4,
                                                            "top_k_examples": 3, "batch_size": 16}})


@pytest.fixture(scope="module")
def m0_results(tiny, synthetic_data, eval_cfg):
    model, processor = tiny
    return evaluate_retrieval(model, processor, synthetic_data.test_pairs, synthetic_data.load_image,
                              cfg=eval_cfg, device="cpu", label="M0")


def test_results_schema_and_protocol(m0_results, synthetic_data):
    results, examples = m0_results
    assert json.loads(json.dumps(results)) == results and json.loads(json.dumps(examples)) == examples
    pairs = synthetic_data.test_pairs
    assert list(results) == ["model", "n_pairs", "n_recipes", "n_images", "metrics", "confidence_intervals",
                             "first_hit_ranks", "efficiency", "protocol"]
    assert results["model"] == "M0"
    assert results["n_pairs"] == len(pairs)
    assert results["n_recipes"] == pairs["recipe_id"].nunique()
    assert results["n_images"] == pairs["image_key"].nunique()
    metric_names = ["R@1", "R@5", "R@10", "MRR", "MedianRank", "MeanRank"]
    for direction in ("text_to_image", "image_to_text"):
        assert list(results["metrics"][direction]) == metric_names
        for name, (lo, hi) in results["confidence_intervals"][direction].items():
            assert lo <= results["metrics"][direction][name] <= hi
    t2i = results["first_hit_ranks"]["text_to_image"]
    i2t = results["first_hit_ranks"]["image_to_text"]
    assert t2i["queries"] == sorted(pairs["recipe_id"].unique())
    assert i2t["queries"] == sorted(pairs["image_key"].unique())
    assert len(t2i["ranks"]) == len(t2i["queries"]) and min(t2i["ranks"]) >= 1
    assert set(results["efficiency"]) == {"images_per_s", "texts_per_s", "peak_memory_bytes", "peak_memory_kind",
                                          "device", "total_parameters", "trainable_parameters"}
    assert set(results["protocol"]) == {"tie_policy", "text_to_image", "image_to_text"}

    assert [e["direction"] for e in examples] == ["text_to_image"] * 4 + ["image_to_text"] * 4
    for example in examples:
        assert len(example["top"]) == 3
        scores = [item["score"] for item in example["top"]]
        assert scores == sorted(scores, reverse=True)
        assert all(item["hit"] == (item["recipe_id"] == example["query_recipe_id"]) for item in example["top"])
        if any(item["hit"] for item in example["top"]):
            first = next(i for i, item in enumerate(example["top"], 1) if item["hit"])
            assert example["first_hit_rank"] >= first  # ties may push the pessimistic rank down


def test_ranks_match_brute_force_from_embeddings(tiny, synthetic_data, m0_results):
    model, processor = tiny
    results, _ = m0_results
    pairs = synthetic_data.test_pairs
    image_keys = sorted(pairs["image_key"].unique())
    images, _ = embed_images(model, processor, image_keys, synthetic_data.load_image, batch_size=8, device="cpu")
    recipe_of_image = pairs.drop_duplicates("image_key").set_index("image_key")["recipe_id"]
    for q, recipe in enumerate(results["first_hit_ranks"]["text_to_image"]["queries"]):
        caption = sorted(pairs.loc[pairs["recipe_id"] == recipe, "caption"])[0]
        text, _ = embed_texts(model, processor, [caption], batch_size=1, device="cpu")
        scores = images @ text[0]
        best = max(s for k, s in zip(image_keys, scores) if recipe_of_image[k] == recipe)
        ahead = sum(1 for k, s in zip(image_keys, scores) if recipe_of_image[k] != recipe and s >= best - 1e-6)
        assert results["first_hit_ranks"]["text_to_image"]["ranks"][q] == 1 + ahead


def test_evaluation_is_deterministic_and_ignores_duplicate_rows(tiny, synthetic_data, eval_cfg, m0_results):
    model, processor = tiny
    doubled = pd.concat([synthetic_data.test_pairs, synthetic_data.test_pairs.iloc[::-1]], ignore_index=True)
    again, examples = evaluate_retrieval(model, processor, doubled, synthetic_data.load_image,
                                         cfg=eval_cfg, device="cpu", label="M0")
    assert again["first_hit_ranks"] == m0_results[0]["first_hit_ranks"]
    assert again["metrics"] == m0_results[0]["metrics"]
    assert examples == m0_results[1]


def test_evaluation_rejects_bad_test_pairs(tiny, synthetic_data, eval_cfg):
    model, processor = tiny
    pairs = synthetic_data.test_pairs
    conflicting = pd.concat([pairs, pairs.head(1).assign(recipe_id="someone-else")], ignore_index=True)
    for bad, match in [(conflicting, "several recipes"), (pairs.drop(columns="caption"), "caption"),
                       (pairs.head(0), "no test pairs")]:
        with pytest.raises(ValueError, match=match):
            evaluate_retrieval(model, processor, bad, synthetic_data.load_image, cfg=eval_cfg, device="cpu", label="x")


def test_compare_to_baseline(m0_results, eval_cfg):
    results, _ = m0_results
    same = compare_to_baseline(results, results, eval_cfg)
    assert same["primary_metric"] == "text_to_image/R@1" and same["h1_supported"] is False
    assert all(entry["diff"] == 0 and entry["ci"] == [0.0, 0.0] for entry in same["text_to_image"].values())
    # A model whose first hit is always rank 1 improves R@1 by a margin the CI must show.
    perfect = {**results, "first_hit_ranks": {
        d: {"queries": v["queries"], "ranks": [1] * len(v["ranks"])} for d, v in results["first_hit_ranks"].items()}}
    better = compare_to_baseline(perfect, results, eval_cfg)
    r1 = better["text_to_image"]["R@1"]
    assert r1["m1"] == 1.0 and r1["diff"] == pytest.approx(1.0 - r1["m0"])
    assert better["h1_supported"] is (r1["ci"][0] > 0) and better["h1_supported"]
    shuffled = {**results, "first_hit_ranks": {
        d: {"queries": v["queries"][::-1], "ranks": v["ranks"]} for d, v in results["first_hit_ranks"].items()}}
    with pytest.raises(ValueError, match="differ"):
        compare_to_baseline(shuffled, results, eval_cfg)


def test_first_hit_ranks_used_by_evaluation_is_pessimistic_on_constant_scores():
    # A model that embeds everything identically must get the worst possible rank.
    ranks = first_hit_ranks(np.zeros((3, 6)), np.array(["a", "b", "c"]), np.array(list("aabbcc")))
    assert ranks.tolist() == [5, 5, 5]


class _SlowStore:
    """An ImageSource whose reads finish out of order (later keys sooner), as several readers' do."""

    def __init__(self, n: int) -> None:
        self.pixels = {f"k{i}": torch.full((3, 2, 2), i, dtype=torch.uint8) for i in range(n)}

    def prefetch(self, keys):
        pass

    def get(self, keys):
        time.sleep(0.002 * (len(self.pixels) - int(keys[0][1:])) / len(self.pixels))
        return torch.stack([self.pixels[k] for k in keys])

    def forget(self, keys):
        pass

    def close(self):
        pass


def test_several_store_readers_yield_the_batches_in_key_order():
    store = _SlowStore(40)
    keys = [f"k{i}" for i in (*range(40), 3, 1)]
    expected = torch.stack([store.pixels[k] for k in keys])
    for readers in (1, 4):
        batches = list(iter_source_batches(keys, store, batch_size=3, readers=readers))
        assert [len(b) for b in batches] == [3] * 14
        assert torch.equal(torch.cat(batches), expected), readers


def test_evaluation_compiles_only_where_it_pays(tiny_model_dir):
    settings = load_experiment_config().evaluation
    assert settings.compile == "auto" and settings.compile_min_items == 500_000
    assert not compile_pays(settings, "cpu", 10**7)  # CPU runs stay eager
    assert not compile_pays(settings, "cuda", 499_999)  # done before a compile would be
    assert compile_pays(settings, "cuda", 500_000)
    assert compile_pays(settings.model_copy(update={"compile": "on"}), "cpu", 1)
    assert not compile_pays(settings.model_copy(update={"compile": "off"}), "cuda", 10**7)
    model, _ = load_clip(tiny_model_dir)
    assert not towers_compiled(prepare_for_inference(model, settings, "cpu", 100))
    on = settings.model_copy(update={"compile": "on"})
    assert towers_compiled(prepare_for_inference(model, on, "cpu", 100))
