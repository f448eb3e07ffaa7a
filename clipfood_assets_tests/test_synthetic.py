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
    adsdb_clean,
    adsdb_recipes,
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


# --------------------------------------------------------------------------- the ADSDB format

ADSDB_KEY = re.compile(
    r"^images/image\$(?P<project>[a-z0-9-]+)\$(?P<stamp>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z)\$(?P<md5>[0-9a-f]{32})"
    r"__(?P<id>[0-9a-f]{10})_(?P<position>\d)\.jpg$"
)
ADSDB_FIELDS = {
    "id", "title_text_raw", "title_text_clean", "ingredients_text_raw", "ingredients_text_clean",
    "instructions_text_raw", "instructions_text_clean", "has_nutrition_data",
    "title__from_layer1", "ingredients__from_layer1", "instructions__from_layer1",
}


@pytest.fixture(scope="module")
def adsdb_zone() -> tuple[list[dict], dict[str, bytes]]:
    jsonl, images = synthetic_trusted_zone(14, seed=7, zone_format="adsdb")
    return [json.loads(line) for line in jsonl.decode("utf-8").splitlines()], dict(images)


def test_adsdb_keys_have_exactly_the_real_shape(adsdb_zone):
    import hashlib

    rows, images = adsdb_zone
    positions: dict[str, list[int]] = {}
    for key, data in images.items():
        match = ADSDB_KEY.match(key)
        assert match, key
        assert match["project"] == "adsdb"
        assert match["md5"] == hashlib.md5(data).hexdigest()
        positions.setdefault(match["id"], []).append(int(match["position"]))
    assert set(positions) == {r["id"] for r in rows}
    for found in positions.values():
        assert sorted(found) == list(range(len(found))) and 1 <= len(found) <= 9  # from 0, 1-9 photos


def test_adsdb_photos_are_512_rgb_jpegs_at_quality_90(adsdb_zone):
    _, images = adsdb_zone
    reference = Image.new("RGB", (512, 512))
    buffer = io.BytesIO()
    reference.save(buffer, "JPEG", quality=90)
    q90 = Image.open(io.BytesIO(buffer.getvalue())).quantization
    for data in list(images.values())[:4]:
        with Image.open(io.BytesIO(data)) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (512, 512))
            assert image.quantization == q90


def test_adsdb_rows_carry_every_field_of_the_real_zone(adsdb_zone):
    rows, _ = adsdb_zone
    for row in rows:
        assert ADSDB_FIELDS <= set(row), ADSDB_FIELDS - set(row)
        assert not any(k.startswith("_") for k in row)  # generator bookkeeping never leaks
        assert re.fullmatch(r"[0-9a-f]{10}", row["id"])
        assert row["title_text_clean"] == adsdb_clean(row["title_text_raw"])
        assert row["ingredients_text_raw"] and row["instructions_text_raw"]
        assert isinstance(row["has_nutrition_data"], bool)
        assert ("nutr_values_per100g" in row) == row["has_nutrition_data"] == ("nutrition_totals" in row)
        for field in ("title__from_layer1", "ingredients__from_layer1", "instructions__from_layer1"):
            assert row[field] and all(set(item) == {"text"} and isinstance(item["text"], str) for item in row[field])
    ids = [r["id"] for r in rows]
    assert any(i.isdigit() for i in ids)  # like 0004073370
    assert any(re.fullmatch(r"\d+e\d+", i) for i in ids)  # like 0001e52345: a number to a type guesser


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("Chicken Pot Pie (Easy!)", "chicken pot pie"),
        ("Sautéed Jalapeño Soup", "sauteed jalapeno soup"),
        ("Crème Brûlée with the Berries", "creme brulee berries"),
        ("Grandma's Pie - Quick & Easy", "grandmas pie"),
        ("   ", ""),
    ],
)
def test_adsdb_clean_text(raw, clean):
    assert adsdb_clean(raw) == clean


def test_adsdb_zone_at_scale_has_the_real_proportions():
    rows = adsdb_recipes(2000, seed=3)
    counts = [r["_photos"] for r in rows]
    assert set(counts) == set(range(1, 10))
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert 0.003 < sum(i.isdigit() for i in ids) / len(ids) < 0.03  # about 1 %
    assert len({r["title_text_raw"] for r in rows}) > 0.9 * len(rows)


def test_adsdb_zone_is_deterministic_and_the_simple_format_unchanged(adsdb_zone):
    rows, images = adsdb_zone
    jsonl, again = synthetic_trusted_zone(14, seed=7, zone_format="adsdb")
    assert [json.loads(line) for line in jsonl.decode("utf-8").splitlines()] == rows
    assert dict(again) == images
    simple, _ = synthetic_trusted_zone(14, seed=7)
    assert simple == synthetic_trusted_zone(14, seed=7, zone_format="simple")[0]
    with pytest.raises(ValueError, match="zone_format"):
        synthetic_trusted_zone(3, seed=1, zone_format="csv")
    for project in ("a$b", "a/b", "a__b", ""):
        with pytest.raises(ValueError, match="ADSDB image key"):
            synthetic_trusted_zone(3, seed=1, zone_format="adsdb", project=project)


def test_the_data_zone_pairs_every_adsdb_photo(adsdb_zone):
    from clipfood_assets.data.pairs import build_positive_pairs
    from clipfood_assets.data.trusted import parse_image_keys, parse_recipes, validate_image

    rows, images = adsdb_zone
    recipes, recipe_quarantine = parse_recipes(json.dumps(r).encode() for r in rows)
    keys, key_quarantine = parse_image_keys(sorted(images))
    assert recipe_quarantine == [] and key_quarantine == []
    assert all(validate_image(k, images[k]) is None for k in list(images)[:5])
    pairs, pair_quarantine = build_positive_pairs(recipes, keys)
    assert pair_quarantine == [] and len(pairs) == len(images)
    by_id = {r["id"]: r["title_text_raw"] for r in rows}
    assert all(by_id[r] == c for r, c in zip(pairs["recipe_id"], pairs["caption"]))
    assert keys["position"].min() == 0


def test_clipfood_synth_writes_the_adsdb_format_by_default(tmp_path, monkeypatch):
    from clipfood_assets.cli import main
    from clipfood_assets.lake import LocalLake

    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    monkeypatch.setenv("CLIPFOOD_LAKE_DIR", str(tmp_path / "lake"))
    assert main(["synth", "--recipes", "3", "--seed", "5"]) == 0
    keys = [o.key for o in LocalLake(tmp_path / "lake").list("trusted-zone", "images/")]
    assert keys and all(ADSDB_KEY.match(k) for k in keys)
    assert main(["synth", "--recipes", "3", "--seed", "5", "--format", "simple"]) == 0
    simple = [o.key for o in LocalLake(tmp_path / "lake").list("trusted-zone", "images/") if o.key not in keys]
    assert simple and all(KEY.match(k) for k in simple)
