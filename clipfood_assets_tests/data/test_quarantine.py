from clipfood_assets.data.quarantine import QuarantineRecord, quarantine_frame


def test_frame_has_columns_even_when_empty():
    frame = quarantine_frame([])
    assert list(frame.columns) == ["source", "reason", "detail"]
    assert frame.empty


def test_frame_reflects_records():
    records = [
        QuarantineRecord("images/a.gif", "bad_extension", "x"),
        QuarantineRecord("documents/recipes.jsonl:line 3", "malformed_json", "y"),
        QuarantineRecord("images/b.gif", "bad_extension", "z"),
    ]
    frame = quarantine_frame(records)
    assert frame["source"].tolist() == ["images/a.gif", "documents/recipes.jsonl:line 3", "images/b.gif"]


def test_records_are_immutable_and_hashable():
    record = QuarantineRecord("k", "r", "d")
    assert record == QuarantineRecord("k", "r", "d")
    assert len({record, QuarantineRecord("k", "r", "d")}) == 1
