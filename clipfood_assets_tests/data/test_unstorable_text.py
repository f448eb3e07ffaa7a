"""Text UTF-8 cannot store (lone surrogates) costs its record, never the run."""

from __future__ import annotations

import json
import os

import pytest

from clipfood_assets.data.prepare import read_positive_pairs
from clipfood_assets.data.quarantine import QuarantineRecord, quarantine_frame
from clipfood_assets.data.trusted import parse_image_keys, parse_recipes
from clipfood_assets.lake import LocalLake
from clipfood_assets.lake.artifacts import decode, encode
from clipfood_assets.lake.layout import RECIPES_KEY, TRUSTED_ZONE

from . import factories as f


def _line(obj: dict) -> bytes:
    # json.dumps writes a lone surrogate as the (valid JSON) escape \\ud83c: valid UTF-8 bytes.
    return (json.dumps(obj) + "\n").encode("utf-8")


@pytest.mark.parametrize(
    "row",
    [
        {"id": "a000000001", "title_text_raw": "Mushroom Salad \ud83c"},  # the input: high surrogate
        {"id": "a000000001", "title_text_raw": "\udf44 Mushroom Salad"},  # low surrogate first
        {"id": "a000000001", "title_text_raw": "Salad \udf44\ud83c"},  # a reversed pair is two lone halves
        {"id": "a000000001", "title_text_clean": "mushroom salad \ud800"},  # the fallback title
        {"id": "a00000\udc001", "title_text_raw": "Mushroom Salad"},  # in the id
    ],
)
def test_unstorable_text_quarantines_that_record_only(row):
    lines = [_line(row), _line({"id": "b000000002", "title_text_raw": "Banana Bread"})]
    recipes, quarantined = parse_recipes(lines)
    assert recipes["recipe_id"].tolist() == ["b000000002"]
    assert [(q.source, q.reason) for q in quarantined] == [(f"{RECIPES_KEY}:line 1", "unencodable_text")]
    # The quarantine itself is always storable, and the reason names what was wrong.
    frame = quarantine_frame(quarantined)
    stored = decode("q.csv", encode("q.csv", frame)[0])
    assert stored["reason"].tolist() == ["unencodable_text"] and "surrogate" in stored["detail"][0]


def test_a_surrogate_pair_is_one_real_character_and_kept():
    recipes, quarantined = parse_recipes([_line({"id": "a1", "title_text_raw": "Mushroom \ud83c\udf44 Salad"})])
    assert quarantined == [] and recipes["caption"].tolist() == ["Mushroom 🍄 Salad"]


def test_unstorable_text_in_fields_we_do_not_store_is_kept():
    row = {"id": "a1", "title_text_raw": "Mushroom Salad", "ingredients_text_raw": "mushrooms \ud83c",
           "title__from_layer1": [{"text": "\udc00"}]}
    recipes, quarantined = parse_recipes([_line(row)])
    assert quarantined == [] and recipes["caption"].tolist() == ["Mushroom Salad"]


def test_keys_with_lone_surrogates_are_quarantined_not_paired():
    images, quarantined = parse_image_keys(["images/ok__r1_0.jpg", "images/bad\udcff__r1_1.jpg", "images/é__r1_2.jpg"])
    assert images["image_key"].tolist() == ["images/ok__r1_0.jpg", "images/é__r1_2.jpg"]
    assert [(q.source, q.reason) for q in quarantined] == [("images/bad\\udcff__r1_1.jpg", "unencodable_key")]


@pytest.mark.skipif(os.name != "posix", reason="needs a filesystem that takes non-UTF-8 file names")
def test_a_non_utf8_file_name_in_the_local_lake_is_quarantined_and_the_rest_stored(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, b"".join(f.recipe_line(f"a{i:09d}", f"Dish number {i}") for i in range(3)))
    for i in range(3):
        lake.put_bytes(TRUSTED_ZONE, f"images/d__a{i:09d}_0.jpg", f.image_bytes("RGB", (16, 16), "JPEG", seed=i))
    folder = os.fsencode(tmp_path / "lake" / TRUSTED_ZONE / "images")
    with open(os.path.join(folder, b"latin1-\xe9__a000000001_1.jpg"), "wb") as out:  # "é" in Latin-1
        out.write(f.image_bytes("RGB", (16, 16), "JPEG", seed=9))
    result = read_positive_pairs(lake, workers=2)
    assert len(result.train) + len(result.validation) + len(result.test) == 3
    assert result.quarantine[["source", "reason"]].values.tolist() == [
        ["images/latin1-\\udce9__a000000001_1.jpg", "unencodable_key"]]
    encode("quarantine.csv", result.quarantine)  # storable


def test_quarantine_frame_escapes_whatever_a_caller_puts_in_it():
    frame = quarantine_frame([QuarantineRecord("images/\udcff.jpg", "r", "detail \ud83c")])
    assert frame.values.tolist() == [["images/\\udcff.jpg", "r", "detail \\ud83c"]]
