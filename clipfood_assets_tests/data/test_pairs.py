import numpy as np
import pandas as pd
import pytest

from clipfood_assets.data.pairs import build_positive_pairs, n_test_recipes, split_by_recipe

from .factories import synthetic_id


def frames(recipes, image_keys):
    recipe_frame = pd.DataFrame(recipes, columns=["recipe_id", "caption"])
    images = pd.DataFrame({"image_key": pd.Series(image_keys, dtype="str")})
    images["recipe_id"] = images["image_key"].str.extract(r"__(.+)_\d+\.\w+$", expand=False)
    return recipe_frame, images


def test_pairs_join_images_to_captions_sorted_with_exact_columns():
    recipes, images = frames(
        [("b", "Soup"), ("a", "Pasta"), ("c", "No images")],
        ["images/z__b_0.jpg", "images/y__a_1.jpg", "images/x__a_0.jpg"],
    )
    pairs, quarantined = build_positive_pairs(recipes, images)
    assert quarantined == []
    assert pairs.columns.tolist() == ["recipe_id", "image_key", "caption"]
    assert pairs.values.tolist() == [
        ["a", "images/x__a_0.jpg", "Pasta"],
        ["a", "images/y__a_1.jpg", "Pasta"],
        ["b", "images/z__b_0.jpg", "Soup"],
    ]
    assert pairs.attrs["recipes_without_images"] == 1


def test_unknown_recipes_and_caption_bounds_are_quarantined():
    recipes, images = frames(
        [("a", "Pasta"), ("s", "ab"), ("l", "x" * 201), ("ok", "abc"), ("max", "y" * 200)],
        ["images/1__a_0.jpg", "images/2__ghost_0.jpg", "images/3__s_0.jpg", "images/4__l_0.jpg", "images/5__ok_0.jpg", "images/6__max_0.jpg"],
    )
    pairs, quarantined = build_positive_pairs(recipes, images, min_caption_chars=3, max_caption_chars=200)
    assert sorted(pairs["recipe_id"]) == ["a", "max", "ok"]
    assert sorted((q.source, q.reason) for q in quarantined) == [
        ("documents/recipes.jsonl:id l", "caption_too_long"),
        ("documents/recipes.jsonl:id s", "caption_too_short"),
        ("images/2__ghost_0.jpg", "unknown_recipe"),
    ]


def test_duplicates_nans_and_blanks_are_dropped():
    recipes = pd.DataFrame(
        {"recipe_id": ["a", "a", None, "b", "c"], "caption": ["Pasta", "Pasta", "Orphan", "   ", None]}
    )
    images = pd.DataFrame(
        {
            "image_key": ["images/x__a_0.jpg", "images/x__a_0.jpg", None, "images/y__b_0.jpg"],
            "recipe_id": ["a", "a", "a", "b"],
        }
    )
    pairs, quarantined = build_positive_pairs(recipes, images)
    assert pairs.values.tolist() == [["a", "images/x__a_0.jpg", "Pasta"]]
    # b has only a blank caption: its image names no usable recipe
    assert [(q.source, q.reason) for q in quarantined] == [("images/y__b_0.jpg", "unknown_recipe")]
    assert not pairs.isna().any().any()


def test_conflicting_captions_in_a_hand_made_frame_are_quarantined():
    recipes, images = frames([("a", "Pasta"), ("a", "Pizza"), ("b", "Soup")], ["images/x__a_0.jpg", "images/y__b_0.jpg"])
    pairs, quarantined = build_positive_pairs(recipes, images)
    assert pairs["recipe_id"].tolist() == ["b"]
    assert sorted(q.reason for q in quarantined) == ["conflicting_duplicate_id", "unknown_recipe"]


def test_pairs_do_not_depend_on_input_order():
    recipes, images = frames(
        [(synthetic_id(i), f"Dish {i}") for i in range(50)],
        [f"images/p{j}__{synthetic_id(i)}_{j}.jpg" for i in range(50) for j in range(i % 4)],
    )
    first, _ = build_positive_pairs(recipes, images)
    second, _ = build_positive_pairs(recipes.sample(frac=1, random_state=1), images.sample(frac=1, random_state=2))
    pd.testing.assert_frame_equal(first, second)
    assert first.to_csv(index=False) == second.to_csv(index=False)


# --- split ------------------------------------------------------------------------------


def pairs_for(n_recipes: int, images_per_recipe: int = 2) -> pd.DataFrame:
    rows = [
        (synthetic_id(i), f"images/d__{synthetic_id(i)}_{j}.jpg", f"Dish {i}")
        for i in range(n_recipes)
        for j in range(1 + (i + images_per_recipe) % 3)
    ]
    return pd.DataFrame(rows, columns=["recipe_id", "image_key", "caption"])


@pytest.mark.parametrize("n, test_size, expected", [(100, 0.2, 20), (7, 0.2, 1), (2, 0.2, 1), (2, 0.9, 1), (1, 0.2, 0), (0, 0.2, 0), (10, 0.25, 2)])
def test_number_of_test_recipes(n, test_size, expected):
    assert n_test_recipes(n, test_size) == expected
    if n:
        train, test = split_by_recipe(pairs_for(n), test_size=test_size)
        assert test["recipe_id"].nunique() == expected
        assert train["recipe_id"].nunique() == n - expected


def test_split_is_by_recipe_and_keeps_every_row():
    pairs = pairs_for(300)
    train, test = split_by_recipe(pairs, test_size=0.2, seed=42)
    assert set(train["recipe_id"]).isdisjoint(test["recipe_id"])
    assert len(train) + len(test) == len(pairs)
    assert test["recipe_id"].nunique() == 60
    merged = pd.concat([train, test]).sort_values(["recipe_id", "image_key"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(merged, pairs.sort_values(["recipe_id", "image_key"]).reset_index(drop=True))


def test_split_is_deterministic_and_independent_of_row_order():
    pairs = pairs_for(200)
    train_a, test_a = split_by_recipe(pairs, seed=7)
    train_b, test_b = split_by_recipe(pairs.sample(frac=1, random_state=3).reset_index(drop=True), seed=7)
    assert train_a.to_csv(index=False) == train_b.to_csv(index=False)
    assert test_a.to_csv(index=False) == test_b.to_csv(index=False)
    _, test_other_seed = split_by_recipe(pairs, seed=8)
    assert set(test_other_seed["recipe_id"]) != set(test_a["recipe_id"])


def test_adding_a_recipe_moves_at_most_one_existing_recipe():
    base = pairs_for(200)
    _, test_before = split_by_recipe(base, seed=42)
    for extra in range(200, 220):
        new_id = synthetic_id(extra)
        grown = pd.concat([base, pd.DataFrame([(new_id, f"images/d__{new_id}_0.jpg", "New dish")], columns=base.columns)])
        _, test_after = split_by_recipe(grown, seed=42)
        before = set(test_before["recipe_id"])
        after = set(test_after["recipe_id"]) - {new_id}
        assert len(before ^ after) <= 1


def test_split_rejects_bad_test_size():
    with pytest.raises(ValueError):
        split_by_recipe(pairs_for(5), test_size=0.0)
    with pytest.raises(ValueError):
        split_by_recipe(pairs_for(5), test_size=1.0)


def test_split_of_empty_pairs_is_two_empty_frames():
    empty = pd.DataFrame(columns=["recipe_id", "image_key", "caption"])
    train, test = split_by_recipe(empty)
    assert train.empty and test.empty and train.columns.tolist() == test.columns.tolist() == ["recipe_id", "image_key", "caption"]


def test_test_share_is_roughly_uniform_over_recipes():
    # the hash ranking is not biased by id order: the first and second halves get similar shares
    pairs = pairs_for(2000)
    _, test = split_by_recipe(pairs)
    ids = np.sort(pairs["recipe_id"].unique())
    share_first_half = np.isin(ids[:1000], test["recipe_id"].unique()).mean()
    assert 0.15 < share_first_half < 0.25


def test_empty_inputs_give_empty_pairs_with_columns():
    recipes, images = frames([], [])
    pairs, quarantined = build_positive_pairs(recipes, images)
    assert pairs.columns.tolist() == ["recipe_id", "image_key", "caption"] and pairs.empty and quarantined == []
    recipes, images = frames([], ["images/x__a_0.jpg"])
    pairs, quarantined = build_positive_pairs(recipes, images)
    assert pairs.empty and [q.reason for q in quarantined] == ["unknown_recipe"]
