import threading
from io import BytesIO

import pandas as pd
import pytest
from PIL import Image

from clipfood_assets.data.augment import (
    build_augmented_pairs,
    plan_augmentations,
    render_all,
    render_variants,
)
from clipfood_assets.data.augment_config import load_augmentation_config
from clipfood_assets.data.checks import (
    caption_recipe_index,
    empty_captions,
    label_balance,
    missing_keys,
    negatives_cross_recipe,
    recipe_leakage,
)
from clipfood_assets.data.pairs import split_by_recipe

from . import factories as f


@pytest.fixture
def cfg():
    return load_augmentation_config({"image_augmentation": {"augmentations_per_image": 2}})


@pytest.fixture
def store(small_pairs):
    return {key: f.image_bytes("RGB", size=(24, 24), fmt="JPEG", seed=i) for i, key in enumerate(small_pairs["image_key"])}


def rendered(plan, store, cfg, workers=2):
    return render_all(plan, store.__getitem__, store.__setitem__, workers=workers, cfg=cfg)


def test_plan_rows_keys_and_seeds(small_pairs, cfg):
    plan = plan_augmentations(small_pairs, cfg)
    images = plan[plan["kind"] == "image"]
    assert len(images) == 2 * len(small_pairs)
    assert set(images["variant"]) == {1, 2}
    first = images[images["source_image_key"] == small_pairs["image_key"][0]]
    stem = small_pairs["image_key"][0].split("/", 1)[1].rsplit(".", 1)[0]
    assert first["image_key"].tolist() == [f"augmented_images/{stem}_aug1.jpg", f"augmented_images/{stem}_aug2.jpg"]
    texts = plan[plan["kind"] == "text"]
    assert (texts["image_key"] == texts["source_image_key"]).all()
    original = dict(zip(small_pairs["image_key"], small_pairs["caption"]))
    assert (texts["caption"] != texts["source_image_key"].map(original)).all()
    assert plan["seed"].is_unique and str(plan["seed"].dtype) == "int64"


def test_plan_is_deterministic_and_per_item(small_pairs, cfg):
    plan = plan_augmentations(small_pairs, cfg)
    shuffled = plan_augmentations(small_pairs.sample(frac=1, random_state=4), cfg)
    assert plan.to_csv(index=False) == shuffled.to_csv(index=False)
    # an item's seed and caption depend on the item, not on which other rows are in the plan
    subset = plan_augmentations(small_pairs.iloc[::3], cfg)
    merged = subset.merge(plan, on=["kind", "image_key", "variant"], suffixes=("", "_full"))
    assert len(merged) == len(subset)
    assert (merged["seed"] == merged["seed_full"]).all() and (merged["caption"] == merged["caption_full"]).all()


def test_colliding_stems_get_distinct_augmented_keys(cfg):
    pairs = pd.DataFrame(
        [("r", "images/a/x__r_0.jpg", "Apple Pie"), ("r", "images/b/x__r_0.jpg", "Apple Pie"), ("q", "images/x__q_0.png", "Stew")],
        columns=["recipe_id", "image_key", "caption"],
    )
    plan = plan_augmentations(pairs, cfg)
    keys = plan.loc[plan["kind"] == "image", "image_key"]
    assert keys.is_unique and all(k.startswith("augmented_images/") and k.endswith(".jpg") for k in keys)
    assert "augmented_images/x__q_0_aug1.jpg" in set(keys)


def test_render_all_writes_every_variant_and_matches_single_render(small_pairs, store, cfg):
    plan = plan_augmentations(small_pairs, cfg)
    progress = []
    result = render_all(plan, store.__getitem__, store.__setitem__, workers=2, progress=lambda d, t: progress.append((d, t)), cfg=cfg)
    images = result[result["kind"] == "image"]
    assert (images["error"] == "").all() and (images["image_ops"] != "").all()
    assert (result.loc[result["kind"] == "text", "image_ops"] == "").all()
    assert progress[-1] == (len(images), len(images)) and [d for d, _ in progress] == sorted(d for d, _ in progress)
    row = images.iloc[3]
    data, ops = render_variants(store[row["source_image_key"]], [int(row["seed"])], cfg)[0]
    assert store[row["image_key"]] == data and "+".join(ops) == row["image_ops"]
    decoded = Image.open(BytesIO(data))
    assert decoded.format == "JPEG" and decoded.size == (24, 24)


def test_same_seed_same_bytes_across_runs_and_worker_counts(small_pairs, store, cfg):
    plan = plan_augmentations(small_pairs, cfg)
    first, second = dict(store), dict(store)
    a = render_all(plan, first.__getitem__, first.__setitem__, workers=1, cfg=cfg)
    b = render_all(plan.sample(frac=1, random_state=2), second.__getitem__, second.__setitem__, workers=3, cfg=cfg)
    assert first == second
    pd.testing.assert_frame_equal(a, b.sort_index())
    source = store[small_pairs["image_key"][0]]
    assert render_variants(source, [7], cfg) == render_variants(source, [7], cfg)
    assert render_variants(source, [7], cfg)[0][0] != render_variants(source, [8], cfg)[0][0]


def test_bad_sources_are_reported_and_write_failures_raise(small_pairs, store, cfg):
    plan = plan_augmentations(small_pairs, cfg)
    broken = dict(store)
    bad_source = small_pairs["image_key"][0]
    broken[bad_source] = b"not an image"
    del broken[small_pairs["image_key"][1]]
    result = rendered(plan, broken, cfg)
    errors = result.loc[result["error"] != "", "source_image_key"]
    assert set(errors) == {bad_source, small_pairs["image_key"][1]}
    assert len(errors) == 4  # both variants of both sources

    def failing_write(key: str, data: bytes) -> None:
        raise OSError("bucket unavailable")

    with pytest.raises(OSError):
        render_all(plan, store.__getitem__, failing_write, workers=2, cfg=cfg)


def test_render_all_needs_the_config_once_the_plan_lost_it(small_pairs, store, cfg):
    plan = plan_augmentations(small_pairs, cfg)
    from_csv = pd.read_csv(BytesIO(plan.to_csv(index=False).encode()), keep_default_na=False)
    with pytest.raises(ValueError, match="needs cfg"):
        render_all(from_csv, store.__getitem__, store.__setitem__, workers=1)
    render_all(plan, store.__getitem__, store.__setitem__, workers=1)  # config carried in attrs


def test_render_uses_threads(small_pairs, store, cfg):
    seen = set()

    def read(key: str) -> bytes:
        seen.add(threading.get_ident())
        return store[key]

    render_all(plan_augmentations(small_pairs, cfg), read, lambda k, d: None, workers=3, cfg=cfg)
    assert len(seen) > 1


def test_augmented_pairs_content(small_pairs, store, cfg):
    plan = rendered(plan_augmentations(small_pairs, cfg), store, cfg)
    augmented = build_augmented_pairs(small_pairs, plan, cfg)
    assert augmented.columns.tolist() == [
        "recipe_id", "image_key", "caption", "label", "augmentation", "source_image_key", "negative_recipe_id"
    ]
    positives, negatives = augmented[augmented["label"] == 1], augmented[augmented["label"] == 0]
    # each negative keeps the recipe its caption was drawn from; positives have none
    assert (positives["negative_recipe_id"] == "").all()
    caption_owners = positives.groupby("caption")["recipe_id"].agg(set)
    assert (negatives["negative_recipe_id"] != negatives["recipe_id"]).all()
    assert all(r in caption_owners[c] for c, r in zip(negatives["caption"], negatives["negative_recipe_id"]))
    n_text = int((plan["kind"] == "text").sum())
    assert len(positives) == len(small_pairs) * (1 + 2) + n_text  # originals, 2 image variants, text variants
    assert (positives["augmentation"] == "none").sum() == len(small_pairs)
    image_rows = positives[positives["image_key"].str.startswith("augmented_images/")]
    assert image_rows["augmentation"].str.match(r"^image:[a-z0-9+]+(;text:[a-z_+]+)?$").all()
    text_rows = positives[(positives["augmentation"] != "none") & ~positives["image_key"].str.startswith("augmented_images/")]
    assert text_rows["augmentation"].str.match(r"^text:[a-z_+]+$").all()
    assert len(negatives) == len(positives) and (negatives["augmentation"] == "negative").all()
    assert label_balance(augmented)[0]
    assert empty_captions(augmented)[0]
    assert negatives_cross_recipe(augmented, caption_recipe_index(augmented))[0]
    assert missing_keys(augmented["image_key"], store.keys())[0]
    # every row's image belongs to its recipe
    source_recipe = dict(zip(small_pairs["image_key"], small_pairs["recipe_id"]))
    assert (augmented["source_image_key"].map(source_recipe) == augmented["recipe_id"]).all()


def test_augmented_csv_is_identical_for_shuffled_inputs(small_pairs, store, cfg):
    plan_a = rendered(plan_augmentations(small_pairs, cfg), dict(store), cfg)
    shuffled = small_pairs.sample(frac=1, random_state=11)
    plan_b = rendered(plan_augmentations(shuffled, cfg), dict(store), cfg)
    csv_a = build_augmented_pairs(small_pairs, plan_a, cfg).to_csv(index=False)
    csv_b = build_augmented_pairs(shuffled, plan_b.sample(frac=1, random_state=3), cfg).to_csv(index=False)
    assert csv_a == csv_b


def test_failed_renders_are_left_out(small_pairs, store, cfg):
    broken = dict(store)
    broken[small_pairs["image_key"][0]] = b""
    plan = rendered(plan_augmentations(small_pairs, cfg), broken, cfg)
    augmented = build_augmented_pairs(small_pairs, plan, cfg)
    failed_keys = set(plan.loc[plan["error"] != "", "image_key"])
    assert failed_keys and not failed_keys & set(augmented["image_key"])


def test_test_split_never_leaks_into_augmented_data(small_pairs, store, cfg):
    train, test = split_by_recipe(small_pairs, test_size=0.3)
    plan = rendered(plan_augmentations(train, cfg), store, cfg)
    augmented = build_augmented_pairs(train, plan, cfg)
    assert recipe_leakage(augmented, test)[0]
    assert not set(augmented["source_image_key"]) & set(test["image_key"])
    assert not set(augmented["caption"]) & set(test["caption"])  # test captions are unique per recipe here
    # a plan that was made from other pairs (e.g. including test) is refused
    full_plan = rendered(plan_augmentations(small_pairs, cfg), dict(store), cfg)
    with pytest.raises(ValueError, match="do not come from these training pairs"):
        build_augmented_pairs(train, full_plan, cfg)


def test_unrendered_plan_is_refused_and_options_respected(small_pairs, store, cfg):
    plan = plan_augmentations(small_pairs, cfg)
    with pytest.raises(ValueError, match="render_all"):
        build_augmented_pairs(small_pairs, plan, cfg)
    no_negatives = load_augmentation_config({"negatives": {"per_positive": 0}, "image_augmentation": {"enabled": False}})
    text_only = plan_augmentations(small_pairs, no_negatives)
    assert set(text_only["kind"]) == {"text"}
    augmented = build_augmented_pairs(small_pairs, text_only, no_negatives)
    assert (augmented["label"] == 1).all()
    two_negatives = load_augmentation_config({"negatives": {"per_positive": 2}, "image_augmentation": {"enabled": False}, "text_augmentation": {"enabled": False}})
    assert plan_augmentations(small_pairs, two_negatives).empty
    augmented = build_augmented_pairs(small_pairs, plan_augmentations(small_pairs, two_negatives), two_negatives)
    assert (augmented["label"] == 0).sum() == 2 * len(small_pairs)
    assert label_balance(augmented, expected_positive_share=1 / 3)[0]


def test_render_all_accepts_a_filtered_plan_with_gaps_in_its_index(small_pairs, store, cfg):
    plan = plan_augmentations(small_pairs, cfg)
    part = plan[plan["kind"] == "image"].iloc[::3]
    result = render_all(part, store.__getitem__, store.__setitem__, workers=2, cfg=cfg)
    assert result.index.equals(part.index)
    assert (result["image_ops"] != "").all() and (result["error"] == "").all()
    for key, ops in zip(result["image_key"], result["image_ops"]):
        assert key in store and ops


def test_training_reads_each_negatives_recipe_from_the_augmented_csv(cfg):
    from clipfood_assets.lake.tables import read_table, write_table
    from clipfood_assets.modeling.batching import prepare_training_pairs

    # "Soup" belongs to two recipes: its recipe cannot be told from the caption, only from the column.
    titles = {"a": "Soup", "b": "Soup", "c": "Bread", "d": "Cake", "e": "Pie"}
    train = pd.DataFrame([(r, f"images/x__{r}_{n}.jpg", t) for r, t in titles.items() for n in range(2)],
                         columns=["recipe_id", "image_key", "caption"])
    augmented = read_table(write_table(build_augmented_pairs(train, pd.DataFrame(), cfg)))
    negatives = augmented[augmented["label"] == 0]
    assert len(negatives) and (negatives["caption"] == "Soup").any()
    routed = prepare_training_pairs(augmented).negatives_by_image
    expected = {}
    for row in negatives.itertuples(index=False):
        expected.setdefault(row.image_key, []).append((row.caption, row.negative_recipe_id))
    assert routed == {key: sorted(pairs) for key, pairs in expected.items()}
