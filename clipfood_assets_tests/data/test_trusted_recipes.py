import json
from collections import Counter

import pytest

from clipfood_assets.data.trusted import iter_lines, parse_recipes

from .factories import recipe_line


def reasons_by_line(records):
    return {int(r.source.rsplit("line ", 1)[1]): r.reason for r in records}


def test_good_lines_become_recipes_with_normalized_captions():
    lines = [
        recipe_line("b", "  Banana \t French\nToast  "),
        recipe_line("a", "Pasta", field="title_text_clean"),
        recipe_line("c", "Soup", field="title", ingredients=["water"], nested={"x": 1}),
    ]
    recipes, quarantined = parse_recipes(lines)
    assert quarantined == []
    assert recipes.columns.tolist() == ["recipe_id", "caption"]
    assert recipes.to_dict("records") == [
        {"recipe_id": "a", "caption": "Pasta"},
        {"recipe_id": "b", "caption": "Banana French Toast"},
        {"recipe_id": "c", "caption": "Soup"},
    ]


def test_title_fallback_order_skips_empty_and_non_string_titles():
    line = json.dumps({"id": "x", "title_text_raw": "   ", "title_text_clean": 42, "title": "Fallback Title"}).encode()
    recipes, _ = parse_recipes([line])
    assert recipes["caption"].tolist() == ["Fallback Title"]
    line = json.dumps({"id": "y", "title_text_raw": "Raw wins", "title": "Not me"}).encode()
    assert parse_recipes([line])[0]["caption"].tolist() == ["Raw wins"]


def test_integer_ids_are_strings_and_other_types_are_quarantined():
    lines = [
        recipe_line(12345),
        recipe_line(1.5),
        recipe_line(True),
        recipe_line(["a"]),
        recipe_line({"id": 1}),
        recipe_line(None),
        b'{"title": "no id"}',
        recipe_line(""),
    ]
    recipes, quarantined = parse_recipes(lines)
    assert recipes["recipe_id"].tolist() == ["12345"]
    assert reasons_by_line(quarantined) == {
        2: "bad_id_type", 3: "bad_id_type", 4: "bad_id_type", 5: "bad_id_type",
        6: "missing_id", 7: "missing_id", 8: "missing_id",
    }


def test_ids_that_cannot_appear_in_an_image_key_are_quarantined():
    lines = [recipe_line("a/b"), recipe_line("a__b"), recipe_line(" ab"), recipe_line("a\x00b"), recipe_line("ok_id-1")]
    recipes, quarantined = parse_recipes(lines)
    assert recipes["recipe_id"].tolist() == ["ok_id-1"]
    assert Counter(r.reason for r in quarantined) == {"bad_id_value": 4}


def test_broken_lines_are_quarantined_with_their_reason_and_line_number():
    good = recipe_line("good", "Good Title")
    lines = [
        good,
        b"\n",  # blank: skipped silently, still counts as a line number
        b'{"id": "t", "title": "Trunc',  # truncated
        b'{"id": "u", "title": "caf\xe9"}',  # latin-1 byte: not UTF-8
        b"\xff\xfe\x00{",  # binary garbage
        b"[1, 2, 3]",
        b'"just a string"',
        b"null",
        b'{"id": "z", "title": "x",}',  # trailing comma
        json.dumps({"id": "h", "title": "x" * 2_000}).encode(),  # huge line (limit set below)
        recipe_line("m", None),
        json.dumps({"id": "n"}).encode(),
    ]
    recipes, quarantined = parse_recipes(lines, max_line_bytes=1_000)
    assert recipes["recipe_id"].tolist() == ["good"]
    assert reasons_by_line(quarantined) == {
        3: "malformed_json", 4: "not_utf8", 5: "not_utf8", 6: "not_an_object", 7: "not_an_object",
        8: "not_an_object", 9: "malformed_json", 10: "line_too_long", 11: "missing_title", 12: "missing_title",
    }
    assert all(r.source.startswith("documents/recipes.jsonl:line ") for r in quarantined)
    assert all(len(r.detail) <= 200 for r in quarantined)
    assert recipes.attrs["lines_read"] == 11


def test_hostile_json_is_malformed_not_a_crash():
    lines = [
        b"[" * 200_000,  # nesting deeper than the recursion limit
        b'{"a":' * 100_000,
        b'{"id": ' + b"7" * 5_000 + b', "title": "Too many digits"}',  # beyond int conversion limit
        b'{"id": "nan", "title": NaN, "title_text_clean": Infinity}',
        recipe_line("a", "Pasta"),
    ]
    recipes, quarantined = parse_recipes(lines)
    assert recipes["recipe_id"].tolist() == ["a"]
    assert reasons_by_line(quarantined) == {1: "malformed_json", 2: "malformed_json", 3: "malformed_json", 4: "missing_title"}


def test_exact_duplicates_collapse_and_are_counted():
    lines = [recipe_line("a", "Pasta"), recipe_line("a", " Pasta "), recipe_line("a", "Pasta"), recipe_line("b", "Soup")]
    recipes, quarantined = parse_recipes(lines)
    assert quarantined == []
    assert recipes["recipe_id"].tolist() == ["a", "b"]
    assert recipes.attrs["exact_duplicates"] == 2


def test_conflicting_duplicate_ids_quarantine_every_line_of_that_id():
    lines = [recipe_line("a", "Pasta"), recipe_line("b", "Soup"), recipe_line("a", "Pizza"), recipe_line("a", "Pasta")]
    recipes, quarantined = parse_recipes(lines)
    assert recipes["recipe_id"].tolist() == ["b"]
    assert reasons_by_line(quarantined) == {1: "conflicting_duplicate_id", 3: "conflicting_duplicate_id", 4: "conflicting_duplicate_id"}


def test_crlf_and_bom_are_tolerated():
    lines = [b"\xef\xbb\xbf" + recipe_line("a", "Pasta").rstrip(b"\n") + b"\r\n", recipe_line("b", "Soup").rstrip(b"\n") + b"\r\n"]
    recipes, quarantined = parse_recipes(lines)
    assert quarantined == []
    assert recipes["caption"].tolist() == ["Pasta", "Soup"]


def test_empty_input_gives_empty_frame_with_columns():
    recipes, quarantined = parse_recipes([])
    assert recipes.columns.tolist() == ["recipe_id", "caption"] and recipes.empty and quarantined == []


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_iter_lines_splits_any_chunking_and_bounds_long_lines(chunk_size):
    payload = recipe_line("a", "Pasta") + b"x" * 5_000 + b"\n" + recipe_line("b", "Soup") + b"\n" + recipe_line("c", "Tail").rstrip(b"\n")
    chunks = [payload[i : i + chunk_size] for i in range(0, len(payload), chunk_size)]
    lines = list(iter_lines(chunks, max_line_bytes=1_000))
    assert len(lines) == 5
    assert len(lines[1]) == 1_001  # cut just past the limit, the rest never buffered
    recipes, quarantined = parse_recipes(lines, max_line_bytes=1_000)
    assert recipes["recipe_id"].tolist() == ["a", "b", "c"]
    assert reasons_by_line(quarantined) == {2: "line_too_long"}
