import pandas as pd
import pytest

from clipfood_assets.data.checks import caption_recipe_index, negatives_cross_recipe
from clipfood_assets.data.negatives import sample_negatives


def test_one_negative_per_positive_with_same_image_and_other_recipe(small_pairs):
    negatives = sample_negatives(small_pairs, per_positive=1, seed=42)
    assert negatives.columns.tolist() == ["recipe_id", "image_key", "caption", "label", "negative_recipe_id"]
    assert len(negatives) == len(small_pairs) and negatives.attrs["dropped"] == 0
    assert (negatives["label"] == 0).all()
    assert sorted(negatives["image_key"]) == sorted(small_pairs["image_key"])
    assert (negatives["negative_recipe_id"] != negatives["recipe_id"]).all()
    caption_of = dict(zip(small_pairs["recipe_id"], small_pairs["caption"]))
    assert (negatives["caption"] == negatives["negative_recipe_id"].map(caption_of)).all()
    image_recipe = dict(zip(small_pairs["image_key"], small_pairs["recipe_id"]))
    assert (negatives["image_key"].map(image_recipe) == negatives["recipe_id"]).all()


def test_several_negatives_per_positive_are_distinct(small_pairs):
    negatives = sample_negatives(small_pairs, per_positive=3, seed=1)
    assert len(negatives) == 3 * len(small_pairs)
    assert not negatives.duplicated(["image_key", "caption"]).any()


def test_deterministic_and_independent_of_row_order(small_pairs):
    first = sample_negatives(small_pairs, per_positive=2, seed=5)
    shuffled = sample_negatives(small_pairs.sample(frac=1, random_state=9), per_positive=2, seed=5)
    assert first.to_csv(index=False) == shuffled.to_csv(index=False)
    assert sample_negatives(small_pairs, per_positive=2, seed=6).to_csv(index=False) != first.to_csv(index=False)


def test_captions_shared_between_recipes_never_become_false_negatives():
    # recipes a and b are both "Pancakes": b's caption is NOT a negative for a's image
    pairs = pd.DataFrame(
        [("a", "images/x__a_0.jpg", "Pancakes"), ("b", "images/x__b_0.jpg", "Pancakes"), ("c", "images/x__c_0.jpg", "Soup"),
         ("d", "images/x__d_0.jpg", "Salad")],
        columns=["recipe_id", "image_key", "caption"],
    )
    for seed in range(25):
        negatives = sample_negatives(pairs, per_positive=1, seed=seed)
        assert not ((negatives["recipe_id"].isin(["a", "b"])) & (negatives["caption"] == "Pancakes")).any()
        assert negatives_cross_recipe(negatives.assign(label=0), caption_recipe_index(pairs))[0]


def test_impossible_negatives_are_dropped_and_counted():
    pairs = pd.DataFrame(
        [("a", "images/x__a_0.jpg", "Same"), ("b", "images/x__b_0.jpg", "Same")], columns=["recipe_id", "image_key", "caption"]
    )
    negatives = sample_negatives(pairs, per_positive=1, seed=0, max_rounds=3)
    assert negatives.empty and negatives.attrs["dropped"] == 2


def test_two_recipes_always_swap():
    pairs = pd.DataFrame(
        [("a", "images/x__a_0.jpg", "Apple Pie"), ("b", "images/x__b_0.jpg", "Beef Stew")], columns=["recipe_id", "image_key", "caption"]
    )
    negatives = sample_negatives(pairs, per_positive=1)
    assert dict(zip(negatives["recipe_id"], negatives["caption"])) == {"a": "Beef Stew", "b": "Apple Pie"}


def test_single_recipe_is_a_clear_error():
    pairs = pd.DataFrame([("a", "images/x__a_0.jpg", "Pie"), ("a", "images/x__a_1.jpg", "Pie")], columns=["recipe_id", "image_key", "caption"])
    with pytest.raises(ValueError, match="at least 2 recipes"):
        sample_negatives(pairs)


def test_zero_per_positive_and_bad_values(small_pairs):
    assert sample_negatives(small_pairs, per_positive=0).empty
    with pytest.raises(ValueError):
        sample_negatives(small_pairs, per_positive=-1)


def test_source_image_key_is_carried(small_pairs):
    negatives = sample_negatives(small_pairs.assign(source_image_key=small_pairs["image_key"]), per_positive=1)
    assert (negatives["source_image_key"] == negatives["image_key"]).all()
