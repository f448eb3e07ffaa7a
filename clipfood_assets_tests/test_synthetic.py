"""The synthetic trusted zone: layout, determinism, and pictures that follow the title."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from clipfood_assets.synthetic import (
    DISHES,
    INGREDIENTS,
    caption_corpus,
    clean_title,
    dish_components,
    generate_recipes,
    image_key,
    render_dish_image,
    render_dish_picture,
    slugify,
    synthetic_trusted_zone,
)

KEY = re.compile(r"^images/(?P<slug>[a-z0-9-]+)__(?P<id>[0-9a-f]{10})_(?P<position>\d+)\.jpg$")


@pytest.fixture(scope="module")
def small_zone() -> tuple[list[dict], dict[str, bytes]]:
    jsonl, images = synthetic_trusted_zone(12, seed=7)
    rows = [json.loads(line) for line in jsonl.decode("utf-8").splitlines()]
    return rows, dict(images)


def test_same_seed_gives_the_same_bytes(small_zone):
    rows, images = small_zone
    jsonl, again = synthetic_trusted_zone(12, seed=7)
    assert [json.loads(line) for line in jsonl.decode("utf-8").splitlines()] == rows
    assert dict(again) == images


def test_another_seed_gives_another_zone(small_zone):
    rows, images = small_zone
    jsonl, other_images = synthetic_trusted_zone(12, seed=8)
    other_rows = [json.loads(line) for line in jsonl.decode("utf-8").splitlines()]
    assert {r["id"] for r in other_rows}.isdisjoint({r["id"] for r in rows})
    first_key, first_bytes = next(other_images)
    assert first_bytes not in set(images.values())


def test_images_come_lazily():
    _, images = synthetic_trusted_zone(3, seed=1)
    assert iter(images) is images  # an iterator, not a materialised list


def test_jsonl_rows_look_like_the_trusted_zone(small_zone):
    rows, _ = small_zone
    for row in rows:
        assert re.fullmatch(r"[0-9a-f]{10}", row["id"])
        assert row["title_text_raw"].strip()
        assert row["title_text_clean"] == clean_title(row["title_text_raw"])
        assert row["ingredients"] and all(isinstance(i, str) and i for i in row["ingredients"])
        assert row["instructions"] and all(isinstance(s, str) and s for s in row["instructions"])
        assert 1 <= row["n_images"] <= 4


def test_keys_follow_the_convention_and_match_the_image_counts(small_zone):
    rows, images = small_zone
    positions: dict[str, list[int]] = {}
    for key in images:
        match = KEY.match(key)
        assert match, key
        positions.setdefault(match["id"], []).append(int(match["position"]))
    by_id = {r["id"]: r for r in rows}
    assert set(positions) == set(by_id)
    for recipe_id, found in positions.items():
        assert sorted(found) == list(range(1, by_id[recipe_id]["n_images"] + 1))
        assert image_key(by_id[recipe_id], 1).startswith(f"images/{slugify(by_id[recipe_id]['title_text_raw'])}__")


def test_images_are_512_rgb_jpegs(small_zone):
    _, images = small_zone
    for data in list(images.values())[:6]:
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            assert image.size == (512, 512)


def test_every_photo_of_a_recipe_is_a_different_shot(small_zone):
    rows, images = small_zone
    recipe = next(r for r in rows if r["n_images"] >= 2)
    first, second = (images[image_key(recipe, p)] for p in (1, 2))
    assert first != second
    assert render_dish_image(recipe, 1, seed=7) == first  # and each shot is reproducible


def test_ids_are_unique_hex_and_titles_varied():
    recipes = generate_recipes(600, seed=3)
    ids = [r["id"] for r in recipes]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{10}", i) for i in ids)
    titles = [r["title_text_raw"] for r in recipes]
    assert len(set(titles)) / len(titles) > 0.9
    dishes = [dish_components(t).dish.name for t in titles]
    assert len(set(dishes)) >= 15  # the whole menu shows up…
    assert max(dishes.count(d) for d in set(dishes)) >= 10  # …and dish types are shared


def test_counts_and_hostile_sizes():
    assert generate_recipes(0, seed=1) == []
    assert len(generate_recipes(5, seed=1)) == 5
    with pytest.raises(ValueError):
        generate_recipes(-1, seed=1)
    with pytest.raises(ValueError):
        generate_recipes(3, seed=1, ingredients=INGREDIENTS[:1])


def test_restricted_vocabulary_stays_inside_it():
    allowed = set(INGREDIENTS[::2])
    for recipe in generate_recipes(80, seed=2, ingredients=INGREDIENTS[::2]):
        assert set(dish_components(recipe["title_text_raw"]).ingredients) <= allowed


@pytest.mark.parametrize(
    ("title", "dish", "ingredients", "descriptor"),
    [
        ("Spicy Tomato Soup (Easy)", "Soup", ["Tomato"], "Spicy"),
        ("French Toast with Banana", "French Toast", ["Banana"], None),
        ("Chicken and Mushroom Pie", "Pie", ["Chicken", "Mushroom"], None),
        ("Grandma's Cherry Ice Cream II", "Ice Cream", ["Cherry"], "Grandma's"),
    ],
)
def test_the_title_decides_the_picture_content(title, dish, ingredients, descriptor):
    components = dish_components(title)
    assert components.dish.name == dish
    assert [i.name for i in components.ingredients] == ingredients
    if descriptor:
        assert descriptor in components.descriptors


def test_titles_outside_the_vocabulary_still_render_deterministically():
    recipe = {"id": "00000000aa", "title_text_clean": "zucchini quesadilla supreme"}
    first = render_dish_image(recipe, 1, seed=0, size=128)
    assert first == render_dish_image(recipe, 1, seed=0, size=128)
    assert dish_components("Zucchini Quesadilla Supreme") == dish_components("zucchini quesadilla supreme")


def _red_share(image: Image.Image) -> float:
    pixels = np.asarray(image, dtype=np.int16)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return float(((red > green + 70) & (red > blue + 70)).mean())


def _green_share(image: Image.Image) -> float:
    pixels = np.asarray(image, dtype=np.int16)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return float(((green > red + 40) & (green > blue + 30)).mean())


@pytest.mark.parametrize("dish", ["Soup", "Pizza", "Smoothie"])
def test_the_ingredient_shows_in_the_colours(dish):
    # Same recipe id and shot: only the ingredient word changes.
    tomato = render_dish_picture({"id": "0123456789", "title_text_raw": f"Tomato {dish}"}, 1, seed=0, size=128)
    spinach = render_dish_picture({"id": "0123456789", "title_text_raw": f"Spinach {dish}"}, 1, seed=0, size=128)
    assert _red_share(tomato) > _red_share(spinach) + 0.01
    assert _green_share(spinach) > _green_share(tomato) + 0.01


def test_the_dish_shows_in_the_layout():
    # Same ingredient and shot, two dishes: the foreground differs in a large area.
    soup = np.asarray(render_dish_picture({"id": "0123456789", "title_text_raw": "Tomato Soup"}, 1, seed=0, size=64))
    tacos = np.asarray(render_dish_picture({"id": "0123456789", "title_text_raw": "Tomato Tacos"}, 1, seed=0, size=64))
    changed = (np.abs(soup.astype(np.int16) - tacos.astype(np.int16)).sum(axis=-1) > 60).mean()
    assert changed > 0.15


def test_every_dish_and_ingredient_renders():
    for k, dish in enumerate(DISHES):
        ingredient, second = INGREDIENTS[k % len(INGREDIENTS)], INGREDIENTS[(k + 7) % len(INGREDIENTS)]
        recipe = {"id": f"{k:010x}", "title_text_raw": f"Spicy Creamy {ingredient.name} and {second.name} {dish.name}"}
        image = render_dish_picture(recipe, 1, seed=0, size=64)
        assert image.size == (64, 64)
        assert np.asarray(image).std() > 10  # not a blank canvas


@pytest.mark.parametrize(
    "title",
    ["Crème Brûlée / ../../etc/passwd", "   ", "汤 Soup!!", "Grandma's <script>Pie</script>", "x" * 500],
)
def test_slugs_are_key_safe_for_hostile_titles(title):
    slug = slugify(title)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug)


def test_clean_title_lowercases_and_strips_punctuation():
    assert clean_title("Spicy Tomato Soup (Easy)") == "spicy tomato soup easy"
    assert clean_title("Grandma's Pie - Gluten-Free!") == "grandmas pie gluten free"


def test_caption_corpus_is_deterministic_and_not_the_demo_titles():
    corpus = caption_corpus(seed=0, n=300)
    assert corpus == caption_corpus(seed=0, n=300)
    assert len(corpus) == 300
    assert corpus != caption_corpus(seed=1, n=300)
    demo_titles = {r["title_text_raw"] for r in generate_recipes(300, seed=0)}
    assert len(demo_titles & set(corpus)) < 0.5 * len(demo_titles)
    vocabulary = " ".join(corpus).lower()
    assert all(d.name.lower() in vocabulary for d in DISHES)
    assert all(i.name.lower() in vocabulary for i in INGREDIENTS)
