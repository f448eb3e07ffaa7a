import json

import pandas as pd

from clipfood_assets.data.checks import (
    caption_recipe_index,
    empty_captions,
    label_balance,
    missing_keys,
    negatives_cross_recipe,
    recipe_leakage,
)


def frame(rows, columns=("recipe_id", "image_key", "caption")):
    return pd.DataFrame(rows, columns=list(columns))


def assert_json_details(result):
    passed, details = result
    json.dumps(details)  # details go into Dagster metadata
    return passed, details


def test_recipe_leakage():
    train = frame([("a", "images/1__a_0.jpg", "A"), ("b", "images/1__b_0.jpg", "B")])
    test = frame([("c", "images/1__c_0.jpg", "C")])
    assert assert_json_details(recipe_leakage(train, test))[0]
    leaky = pd.concat([test, frame([("b", "images/2__b_1.jpg", "B")])])
    passed, details = assert_json_details(recipe_leakage(train, leaky))
    assert not passed and details["shared_recipes"] == 1 and details["examples"] == ["b"]
    same_image = frame([("z", "images/1__a_0.jpg", "Z")])
    passed, details = recipe_leakage(train, same_image)
    assert not passed and details["shared_image_keys"] == 1


def test_empty_captions():
    good = frame([("a", "k1", "Apple")])
    assert empty_captions(good)[0]
    bad = frame([("a", "k1", "Apple"), ("b", "k2", "  "), ("c", "k3", None)])
    passed, details = assert_json_details(empty_captions(bad))
    assert not passed and details["empty"] == 2 and details["examples"] == ["k2", "k3"]


def test_label_balance():
    balanced = pd.DataFrame({"label": [1, 0] * 10})
    assert assert_json_details(label_balance(balanced))[0]
    skewed = pd.DataFrame({"label": [1] * 14 + [0] * 6})
    passed, details = label_balance(skewed, tolerance=0.05)
    assert not passed and details["positive_share"] == 0.7
    assert label_balance(pd.DataFrame({"label": [1, 0, 0] * 5}), expected_positive_share=1 / 3)[0]
    assert not label_balance(pd.DataFrame({"label": [1, 0, 2, 0]}), tolerance=1.0)[0]
    assert not label_balance(pd.DataFrame({"label": []}))[0]


def test_negatives_cross_recipe():
    positives = frame([("a", "ia", "Pancakes"), ("b", "ib", "Pancakes"), ("c", "ic", "Soup")]).assign(label=1)
    index = caption_recipe_index(positives)
    assert index == {"Pancakes": {"a", "b"}, "Soup": {"c"}}
    good = frame([("a", "ia", "Soup"), ("c", "ic", "Pancakes")]).assign(label=0)
    assert assert_json_details(negatives_cross_recipe(pd.concat([positives, good]), index))[0]
    false_negative = frame([("a", "ia", "Pancakes")]).assign(label=0)  # b's caption, but also a's
    passed, details = negatives_cross_recipe(pd.concat([positives, false_negative]), index)
    assert not passed and details["same_recipe_captions"] == 1
    unknown = frame([("a", "ia", "Mystery")]).assign(label=0)
    passed, details = negatives_cross_recipe(unknown, positives[["caption", "recipe_id"]])
    assert not passed and details["unknown_captions"] == 1


def test_missing_keys():
    assert assert_json_details(missing_keys(pd.Series(["a", "b", "a", None]), ["a", "b", "c"]))[0]
    passed, details = missing_keys(["a", "x", "y"], iter(["a"]))
    assert not passed and details == {"referenced": 3, "missing": 2, "examples": ["x", "y"]}
