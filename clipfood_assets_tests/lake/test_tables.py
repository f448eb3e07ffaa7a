"""One declared schema for every CSV artifact: ids, keys and captions are text end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from clipfood_assets.lake.artifacts import decode, encode
from clipfood_assets.lake.tables import COLUMN_TYPES, SchemaError, read_table, write_table

# Strings pandas would turn into numbers, booleans or missing values if it were allowed to guess.
HOSTILE_TEXT = [
    "01", "1", "001", "0001", "0012e5", "1200000", "1e5", "0001e52345", "0004073370", "-0", "+1", "1.0",
    "inf", "-inf", "nan", "NaN", "NA", "N/A", "null", "None", "True", "false", "#N/A", " 1", "1 ", "0x1A",
    "1_000", "१२३", "", " ", "12345678901234567890123", "=1+1", "a,b", 'say "hi"', "two\nlines", "cr\rlf",
    "\ufeffbom", "tab\there", "ünïcödé ✓ 🍕",
]


def test_hostile_text_round_trips_exactly_in_every_text_column():
    frame = pd.DataFrame({
        "recipe_id": HOSTILE_TEXT,
        "image_key": [f"images/x__{v}_0.jpg" for v in range(len(HOSTILE_TEXT))],
        "caption": list(reversed(HOSTILE_TEXT)),
        "label": [i % 2 for i in range(len(HOSTILE_TEXT))],
    })
    back = read_table(write_table(frame))
    assert back["recipe_id"].tolist() == HOSTILE_TEXT
    assert back["caption"].tolist() == list(reversed(HOSTILE_TEXT))
    assert back["label"].tolist() == frame["label"].tolist() and str(back["label"].dtype) == "int64"
    assert all(str(back[c].dtype) == "str" for c in ("recipe_id", "image_key", "caption"))


def test_the_issue_ids_come_back_as_written():
    # Issue 11, input 1: written ['01','1','0012e5','1200000'], read back [1.0, 1.0, 1200000.0, 1200000.0].
    data, _ = encode("datasets/train_pairs_positive.csv",
                     pd.DataFrame({"recipe_id": ["01", "1", "0012e5", "1200000"], "image_key": list("abcd"),
                                   "caption": ["t"] * 4}))
    assert decode("datasets/train_pairs_positive.csv", data)["recipe_id"].tolist() == ["01", "1", "0012e5", "1200000"]


def test_integer_ids_written_by_a_caller_are_stored_as_their_text():
    back = read_table(write_table(pd.DataFrame({"recipe_id": [1, 20], "label": ["1", "0"]})))
    assert back["recipe_id"].tolist() == ["1", "20"] and back["label"].tolist() == [1, 0]


@pytest.mark.parametrize("cell", ["1.0", "1e3", "one", "", "1_000", "0x1"])
def test_integer_columns_refuse_anything_but_integers(cell):
    with pytest.raises(SchemaError, match="'label' must be int64"):
        read_table(f"recipe_id,label\nr,{cell}\n".encode())


def test_nullable_integers_and_floats_are_typed():
    back = read_table(b"run,m0_rank,m1_rank,rank_change,metric,value\n007,,3,,R@1,0.1\n")
    assert back["run"].tolist() == ["007"]
    assert back["m0_rank"].isna().all() and back["m1_rank"].tolist() == [3]
    assert back["value"].tolist() == [0.1]


def test_undeclared_columns_cannot_be_written_and_are_read_as_text():
    with pytest.raises(SchemaError, match=r"\['surprise'\] have no declared type"):
        write_table(pd.DataFrame({"recipe_id": ["a"], "surprise": [1]}))
    back = read_table(b"recipe_id,surprise\n007,0012\n")
    assert back["surprise"].tolist() == ["0012"]


def test_text_utf8_cannot_hold_is_refused_with_its_place():
    with pytest.raises(SchemaError, match=r"'caption' row 1"):
        write_table(pd.DataFrame({"caption": ["fine", "Mushroom Salad \ud83c"]}))


def test_empty_tables_keep_their_columns_and_types():
    back = read_table(write_table(pd.DataFrame({"recipe_id": pd.Series(dtype="str"), "label": pd.Series(dtype="int64")})))
    assert back.columns.tolist() == ["recipe_id", "label"] and len(back) == 0
    with pytest.raises(SchemaError, match="empty CSV"):
        read_table(b"")


def test_no_other_code_guesses_csv_types():
    """Every CSV read in the package goes through lake.tables (grep for read_csv)."""
    package = Path(__file__).resolve().parents[2] / "clipfood_assets"
    allowed = {"lake/tables.py"}
    offenders = [
        str(path.relative_to(package)) for path in package.rglob("*.py")
        if re.search(r"\bread_csv\(|\bcsv\.reader\(|\bcsv\.DictReader\(", path.read_text(encoding="utf-8"))
        and str(path.relative_to(package)) not in allowed
    ]
    assert offenders == []


def test_every_declared_type_is_one_the_reader_supports():
    assert set(COLUMN_TYPES.values()) <= {"str", "int64", "Int64", "float64"}
