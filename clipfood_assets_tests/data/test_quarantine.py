from clipfood_assets.data.quarantine import QuarantineRecord, quarantine_frame, reason_counts


def test_frame_has_columns_even_when_empty():
    frame = quarantine_frame([])
    assert list(frame.columns) == ["source", "reason", "detail"]
    assert frame.empty


def test_frame_and_counts_reflect_records():
    records = [
        QuarantineRecord("images/a.gif", "bad_extension", "x"),
        QuarantineRecord("documents/recipes.jsonl:line 3", "malformed_json", "y"),
        QuarantineRecord("images/b.gif", "bad_extension", "z"),
    ]
    frame = quarantine_frame(records)
    assert frame["source"].tolist() == ["images/a.gif", "documents/recipes.jsonl:line 3", "images/b.gif"]
    assert reason_counts(records) == {"bad_extension": 2, "malformed_json": 1}
    assert list(reason_counts(records)) == sorted(reason_counts(records))


def test_records_are_immutable_and_hashable():
    record = QuarantineRecord("k", "r", "d")
    assert record == QuarantineRecord("k", "r", "d")
    assert len({record, QuarantineRecord("k", "r", "d")}) == 1
