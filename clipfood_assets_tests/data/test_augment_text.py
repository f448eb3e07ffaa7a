from pathlib import Path

import numpy as np
import pytest

from clipfood_assets.data.augment_config import AugmentationConfig, load_augmentation_config
from clipfood_assets.data.augment_text import augment_caption, reorder_title, simplify_title, title_case, truncate_words

OPS = ["synonym_replacement", "prefix", "reorder", "case_normalization", "suffix", "simplification"]


def only(op: str, **params) -> AugmentationConfig:
    text = {name: {"enabled": name == op, "probability": 1.0} for name in OPS}
    text[op].update(params)
    return load_augmentation_config({"text_augmentation": text})


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_synonyms_replace_whole_words_keeping_case():
    cfg = only("synonym_replacement", synonyms={"crispy": ["crunchy"], "slow cooker": ["crock pot"]})
    assert augment_caption("Crispy crispy CRISPY Crispyness", cfg, rng()) == ("Crunchy crunchy CRUNCHY Crispyness", ["synonym"])
    assert augment_caption("Slow Cooker Extra-crispy Ribs", cfg, rng())[0] == "Crock Pot Extra-crunchy Ribs"
    assert augment_caption("Plain Rice", cfg, rng(), ensure_change=False) == ("Plain Rice", [])


def test_prefix_is_added_or_removed_never_stacked():
    add = only("prefix", prefixes=["Homemade"], remove_probability=0.0)
    assert augment_caption("Apple Pie", add, rng()) == ("Homemade Apple Pie", ["prefix_add"])
    assert augment_caption("Homemade Apple Pie", add, rng(), ensure_change=False) == ("Homemade Apple Pie", [])
    remove = only("prefix", prefixes=["Homemade"], remove_probability=1.0)
    assert augment_caption("homemade Apple Pie", remove, rng()) == ("Apple Pie", ["prefix_remove"])


@pytest.mark.parametrize(
    "title, expected",
    [
        ("Banana French Toast", "French Toast with Banana"),
        ("Chocolate Banana Bread", "Banana Bread with Chocolate"),
        ("BANANA FRENCH TOAST", "FRENCH TOAST WITH BANANA"),
        ("French Toast", None),  # fewer than 3 words
        ("Baked Bean Soup", None),  # first word a cooking method
        ("Easy Chicken Curry", None),  # first word a descriptor
        ("Chicken Fried Steak", None),  # second word a participle
        ("Peanut Butter Cookies", None),  # known compound
        ("Ice Cream Cake", None),
        ("Mac and Cheese Bites", None),  # has a connective already
        ("Grandma's Apple Pie", None),  # punctuation
        ("7 Layer Dip Cups", None),  # digits
    ],
)
def test_reorder_rule(title, expected):
    assert reorder_title(title) == expected


def test_case_modes_and_title_case_inside_brackets():
    assert augment_caption("apple pie", only("case_normalization", modes=["upper"]), rng()) == ("APPLE PIE", ["case_upper"])
    assert augment_caption("Apple Pie", only("case_normalization", modes=["lower"]), rng()) == ("apple pie", ["case_lower"])
    assert title_case("crispy chicken (air fryer) mom's") == "Crispy Chicken (Air Fryer) Mom's"
    # a mode that changes nothing is not "applied"
    assert augment_caption("APPLE PIE", only("case_normalization", modes=["upper"]), rng(), ensure_change=False)[1] == []


def test_suffix_is_appended_once():
    cfg = only("suffix", suffixes=["Recipe"])
    assert augment_caption("Apple Pie", cfg, rng()) == ("Apple Pie Recipe", ["suffix"])
    assert augment_caption("Apple Pie Recipe", cfg, rng(), ensure_change=False) == ("Apple Pie Recipe", [])


@pytest.mark.parametrize(
    "title, expected",
    [
        ("Chili (Slow Cooker) #2", "Chili"),
        ("1. Best Brownies", "Best Brownies"),
        ("Pasta [vegan] (quick (really))", "Pasta"),
        ("Grandma's Meatloaf No. 3 - ", "Grandma's Meatloaf"),
        ("7 Layer Dip", "7 Layer Dip"),  # a number that is part of the name stays
    ],
)
def test_simplification(title, expected):
    assert simplify_title(title) == expected


def test_simplification_that_would_empty_the_caption_is_refused():
    cfg = only("simplification")
    assert augment_caption("(Untitled)", cfg, rng(), ensure_change=False) == ("(Untitled)", [])


def test_truncation_on_word_boundary():
    assert truncate_words("Banana French Toast", 12) == "Banana"
    assert truncate_words("Banana French Toast", 13) == "Banana French"
    assert truncate_words("Supercalifragilistic", 5) == "Super"
    long_title = " ".join(["Delicious"] * 20)
    out, ops = augment_caption(long_title, only("suffix"), rng())
    assert len(out) <= 77 and not out.endswith(" ") and "truncate" in ops


@pytest.mark.parametrize("hostile", ["   x  ", "((()))", "#1", "-", "ééé", "a" * 500, "\t\nSoup\x00"])
def test_never_returns_an_empty_caption(hostile):
    for seed in range(30):
        out, _ = augment_caption(hostile, AugmentationConfig(), rng(seed))
        assert out.strip() and len(out) <= 77


def test_empty_input_is_an_error():
    with pytest.raises(ValueError):
        augment_caption("   ", AugmentationConfig(), rng())


def test_deterministic_and_usually_changed():
    cfg = load_augmentation_config(Path(__file__).resolve().parents[2] / "configs" / "augmentation_config.yaml")
    titles = ["Banana French Toast", "Crispy Chicken Wings", "Easy Pasta Salad", "Chili #2", "Apple Pie"]
    first = [augment_caption(t, cfg, rng(i)) for i, t in enumerate(titles * 4)]
    again = [augment_caption(t, cfg, rng(i)) for i, t in enumerate(titles * 4)]
    assert first == again
    assert all(out != title and ops for (out, ops), title in zip(first, titles * 4))


def test_disabled_text_augmentation_is_identity():
    cfg = load_augmentation_config({"text_augmentation": {"enabled": False}})
    assert augment_caption("  Apple   Pie ", cfg, rng()) == ("Apple Pie", [])
