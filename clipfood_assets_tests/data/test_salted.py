"""A salted trusted zone: good records plus one of every bad kind.

Every bad input must come out quarantined with its own reason, and every good pair must
survive (nothing good lost, nothing bad let through).
"""

import json

import pandas as pd

from clipfood_assets.data.pairs import build_positive_pairs, exclude_quarantined, split_by_recipe
from clipfood_assets.data.trusted import iter_lines, parse_image_keys, parse_recipes, validate_images

from . import factories as f

RECIPES = "documents/recipes.jsonl"


def build_salted_zone():
    """Return (recipes.jsonl bytes, {image key: bytes}, expected pairs, expected quarantine)."""
    lines: list[bytes] = []
    objects: dict[str, bytes] = {}
    expected_pairs: list[tuple[str, str, str]] = []
    expected_quarantine: dict[str, str] = {}

    def add_line(payload: bytes, reason: str | None = None) -> None:
        lines.append(payload.rstrip(b"\n"))
        if reason:
            expected_quarantine[f"{RECIPES}:line {len(lines)}"] = reason

    good_ids = [f.synthetic_id(i) for i in range(30)]
    for i, recipe_id in enumerate(good_ids):
        title = f"Good Dish Number {i}"
        add_line(f.recipe_line(recipe_id, title, extra_field={"kept": True}))  # unknown fields are fine
        for position in range(1 + i % 3):
            key = f"images/good dish é {i}__{recipe_id}_{position}.jpg"
            objects[key] = f.image_bytes("RGB", size=(16, 16), fmt="JPEG", seed=i)
            expected_pairs.append((recipe_id, key, title))
    # an integer id: accepted as its string
    add_line(f.recipe_line(987654, "Integer Id Dish"))
    objects["images/int__987654_0.png"] = f.image_bytes("RGB", size=(16, 16))
    expected_pairs.append(("987654", "images/int__987654_0.png", "Integer Id Dish"))
    # valid but unusual images on a good recipe: kept
    odd = {
        "rgba.png": f.rgba_png(), "palette.png": f.palette_png_with_transparency(), "gray16.png": f.gray16_png(),
        "cmyk.jpg": f.image_bytes("CMYK", fmt="JPEG"), "gray.jpg": f.image_bytes("L", fmt="JPEG"),
        "exif.jpg": f.exif_rotated_jpeg(),
    }
    for n, (name, data) in enumerate(odd.items()):
        key = f"images/{name.split('.')[0]}__{good_ids[0]}_{10 + n}.{name.split('.')[1]}"
        objects[key] = data
        expected_pairs.append((good_ids[0], key, "Good Dish Number 0"))
    # exact duplicate line: collapses silently
    add_line(f.recipe_line(good_ids[1], "Good Dish Number 1"))

    # --- bad recipe lines ---
    add_line(b'{"id": "trunc", "title": "Cut o', "malformed_json")
    add_line(b"{not json at all}", "malformed_json")
    add_line(b'{"id": "latin", "title": "Cr\xe8me"}', "not_utf8")
    add_line(json.dumps({"id": "huge", "title": "x" * 5000}).encode(), "line_too_long")
    add_line(b"[1, 2]", "not_an_object")
    add_line(json.dumps({"title": "Nobody"}).encode(), "missing_id")
    add_line(json.dumps({"id": 3.5, "title": "Float id"}).encode(), "bad_id_type")
    add_line(json.dumps({"id": "a/b", "title": "Slash id"}).encode(), "bad_id_value")
    add_line(json.dumps({"id": "notitle", "title_text_raw": ""}).encode(), "missing_title")
    add_line(f.recipe_line("conflict", "Version A"), "conflicting_duplicate_id")
    add_line(f.recipe_line("conflict", "Version B"), "conflicting_duplicate_id")
    add_line(f.recipe_line("short", "ab"))
    expected_quarantine[f"{RECIPES}:id short"] = "caption_too_short"
    add_line(f.recipe_line("long", "y" * 250))
    expected_quarantine[f"{RECIPES}:id long"] = "caption_too_long"
    for recipe_id in ("short", "long"):
        objects[f"images/x__{recipe_id}_0.jpg"] = f.image_bytes("RGB", size=(16, 16), fmt="JPEG")

    # --- bad image keys (bytes are fine; the key is the problem) ---
    bad_keys = {
        "images/../escape__" + good_ids[0] + "_0.jpg": "unsafe_key",
        "/images/abs__" + good_ids[0] + "_0.jpg": "unsafe_key",
        "images\\win__" + good_ids[0] + "_0.jpg": "unsafe_key",
        "images/nul\x00__" + good_ids[0] + "_0.jpg": "unsafe_key",
        "images/anim__" + good_ids[0] + "_0.gif": "bad_extension",
        "images/no-recipe-id.jpg": "unparseable_key",
        "images/ghost__ffffffffff_0.jpg": "unknown_recipe",
        "images/conflicted__conflict_0.jpg": "unknown_recipe",
    }
    for key, reason in bad_keys.items():
        objects[key] = f.image_bytes("RGB", size=(16, 16), fmt="JPEG")
        expected_quarantine[repr(key)[1:-1] if "\x00" in key else key] = reason
    # --- bad image bytes on good recipes ---
    bad_bytes = {
        "empty": (b"", "empty_image"),
        "truncated": (f.image_bytes("RGB", size=(64, 64), fmt="JPEG")[:300], "corrupt_image"),
        "text": (b"hello, I am a text file", "not_an_image"),
        "tiny": (f.image_bytes("RGB", size=(1, 1)), "image_too_small"),
        "bomb": (f.bomb_png(), "image_too_large"),
    }
    for n, (name, (data, reason)) in enumerate(bad_bytes.items()):
        key = f"images/{name}__{good_ids[2]}_{20 + n}.jpg"
        objects[key] = data
        expected_quarantine[key] = reason

    jsonl = b"\n".join(lines) + b"\n"
    expected = pd.DataFrame(expected_pairs, columns=["recipe_id", "image_key", "caption"])
    expected = expected.sort_values(["recipe_id", "image_key"]).reset_index(drop=True)
    return jsonl, objects, expected, expected_quarantine


def run_pipeline(jsonl: bytes, objects: dict[str, bytes]):
    chunks = [jsonl[i : i + 97] for i in range(0, len(jsonl), 97)]
    recipes, q_recipes = parse_recipes(iter_lines(chunks, max_line_bytes=2_000), max_line_bytes=2_000)
    images, q_keys = parse_image_keys(objects.keys())
    pairs, q_pairs = build_positive_pairs(recipes, images)
    q_images = validate_images(pairs["image_key"], objects.__getitem__, workers=2)
    return exclude_quarantined(pairs, q_images), q_recipes + q_keys + q_pairs + q_images


def test_every_bad_input_is_quarantined_and_nothing_good_is_lost():
    jsonl, objects, expected_pairs, expected_quarantine = build_salted_zone()
    pairs, quarantined = run_pipeline(jsonl, objects)
    got = {record.source: record.reason for record in quarantined}
    assert len(got) == len(quarantined)  # one record per bad input
    assert got == expected_quarantine
    pd.testing.assert_frame_equal(pairs, expected_pairs)
    assert len(pairs) == sum(1 + i % 3 for i in range(30)) + 1 + 6  # good images + int id + odd modes


def test_salted_pipeline_then_split_never_leaks():
    jsonl, objects, _, _ = build_salted_zone()
    pairs, _ = run_pipeline(jsonl, objects)
    train, test = split_by_recipe(pairs)
    assert set(train["recipe_id"]).isdisjoint(test["recipe_id"])
    assert test["recipe_id"].nunique() == round(0.2 * pairs["recipe_id"].nunique())


def test_unreadable_objects_are_quarantined_not_fatal():
    def read(key: str) -> bytes:
        if "missing" in key:
            raise KeyError(key)
        return f.image_bytes("RGB", size=(16, 16))

    records = validate_images(["images/a__r_0.png", "images/missing__r_1.png"], read, workers=2)
    assert [(r.source, r.reason) for r in records] == [("images/missing__r_1.png", "unreadable_image")]
