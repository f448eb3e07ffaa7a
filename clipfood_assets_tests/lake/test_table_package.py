"""Each folder of tables holds a datapackage.json (Frictionless Data Package v2, Table Schema per CSV) that
stock pandas and the `frictionless` package read the tables with, in the declared types."""

import json
import threading
from pathlib import Path

import frictionless
import numpy as np
import pandas as pd
import pytest

from clipfood_assets.lake import LocalLake
from clipfood_assets.lake.tables import (
    COLUMN_TYPES,
    DATA_PACKAGE,
    put_table,
    read_table,
    write_table,
)

BUCKET = "fine-tuning-zone"


def _readme_snippet():
    """README's `read_tables` (Using the outputs elsewhere), run as a practitioner would paste it."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("import json\nfrom pathlib import Path\n\nimport pandas as pd\n\ndef read_tables(")
    code = readme[start:readme.index("    return tables\n", start) + len("    return tables\n")]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the documented snippet itself
    return namespace["read_tables"]


read_tables = _readme_snippet()


def _datasets() -> dict[str, pd.DataFrame]:
    return {
        # ids pandas would take for numbers, captions it would take for missing values
        "datasets/train_pairs_positive.csv": pd.DataFrame({
            "recipe_id": ["007", "0012e5", "1"], "image_key": ["images/a__007_0.jpg", "images/b_0.jpg", "i/c.jpg"],
            "caption": ["NA", "", "Crème \"brûlée\", vite"], "label": [1, 1, 1]}),
        "datasets/train_pairs_augmented_with_negatives.csv": pd.DataFrame({
            "recipe_id": ["007", "1"], "image_key": ["images/a.jpg", "images/c.jpg"], "caption": ["null", "nan"],
            "label": [1, 0], "augmentation": ["", "negative"], "source_image_key": ["", ""],
            "negative_recipe_id": ["", "007"]}),
        # no rows: every column would come back as object (or float64) without the schema
        "datasets/test_pairs_positive.csv": pd.DataFrame({c: pd.Series([], dtype=COLUMN_TYPES[c]) for c in (
            "recipe_id", "image_key", "caption", "label")}),
        # nullable integers and floats, with missing values
        "datasets/failure_cases.csv": pd.DataFrame({
            "run": ["007", "r4"], "direction": ["text_to_image"] * 2, "query": ["", "x"],
            "m0_rank": pd.array([3, None], dtype="Int64"), "m1_rank": pd.array([None, 1], dtype="Int64"),
            "rank_change": pd.array([None, None], dtype="Int64"), "metric": ["R@1", "R@5"],
            "value": [0.25, np.nan]}),
    }


@pytest.fixture
def datasets(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    for key, frame in _datasets().items():
        put_table(lake, BUCKET, key, frame)
    return lake, lake.root / BUCKET / "datasets"


def test_pandas_reading_with_the_datapackage_gets_the_declared_types_and_values(datasets):
    lake, folder = datasets
    tables = read_tables(folder)
    assert set(tables) == {"train_pairs_positive", "train_pairs_augmented_with_negatives", "test_pairs_positive",
                           "failure_cases"}
    for key in _datasets():
        name = key.rsplit("/", 1)[1].removesuffix(".csv")
        frame = tables[name]
        assert {c: str(t) for c, t in frame.dtypes.items()} == {c: COLUMN_TYPES[c] for c in frame.columns}, name
        pd.testing.assert_frame_equal(frame, read_table(lake.get_bytes(BUCKET, key)))  # what the platform reads
    assert tables["train_pairs_positive"]["recipe_id"].tolist() == ["007", "0012e5", "1"]
    assert tables["train_pairs_positive"]["caption"].tolist() == ["NA", "", "Crème \"brûlée\", vite"]
    assert tables["failure_cases"]["m0_rank"].isna().tolist() == [False, True]
    # What a reader without the schema gets: guesses (ids as numbers, empty text as float, no rows as object).
    assert str(pd.read_csv(folder / "train_pairs_positive.csv")["recipe_id"].dtype) == "float64"
    assert str(pd.read_csv(folder / "train_pairs_augmented_with_negatives.csv")["source_image_key"].dtype) == "float64"
    assert str(pd.read_csv(folder / "test_pairs_positive.csv")["label"].dtype) == "object"


def test_frictionless_validates_the_package_and_catches_a_table_that_breaks_its_schema(datasets):
    lake, folder = datasets
    report = frictionless.Package(str(folder / DATA_PACKAGE)).validate()
    assert report.valid, report.flatten(["rowNumber", "fieldName", "type", "note"])
    package = frictionless.Package(str(folder / DATA_PACKAGE))
    rows = package.get_resource("train_pairs_positive").read_rows()
    assert [(r["recipe_id"], r["caption"], r["label"]) for r in rows] == [
        ("007", "NA", 1), ("0012e5", "", 1), ("1", "Crème \"brûlée\", vite", 1)]  # "" is text, not missing
    assert package.get_resource("failure_cases").read_rows()[1]["m0_rank"] is None

    # A row whose label is no integer, another without one: the package says what the table must hold.
    lake.put_bytes(BUCKET, "datasets/train_pairs_positive.csv",
                   b'"recipe_id","image_key","caption","label"\n"1","k","c",x\n"2","k","c",\n')
    errors = frictionless.Package(str(folder / DATA_PACKAGE)).validate().flatten(["rowNumber", "fieldName", "type"])
    assert errors == [[2, "label", "type-error"], [3, "label", "constraint-error"]]


def test_undeclared_columns_are_described_as_the_text_they_are_read_as(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    frame = pd.DataFrame({"recipe_id": ["1"], "label": [1]})
    lake.put_bytes(BUCKET, "extra/table.csv", write_table(frame).replace(b'"label"', b'"notes"'))
    put_table(lake, BUCKET, "extra/other.csv", frame)
    package = json.loads(lake.get_bytes(BUCKET, "extra/" + DATA_PACKAGE))
    schemas = {r["name"]: r["schema"]["fields"] for r in package["resources"]}
    assert schemas["table"][1] == {"name": "notes", "type": "string", "missingValues": []}
    assert schemas["other"][1] == {"name": "label", "type": "integer", "constraints": {"required": True}}


def test_tables_written_at_once_in_one_folder_all_end_up_in_its_package(lake, bucket):
    # Writer A lists the folder (only its own table there), then B writes its table and its package; A's
    # package, written last, would leave B's table out unless A looks again.
    b_done = threading.Event()
    put_bytes = lake.put_bytes

    def slow_package_of_a(bucket_, key, data, content_type=None):
        if key.endswith(DATA_PACKAGE) and threading.current_thread().name == "writer-a" and not b_done.is_set():
            assert b_done.wait(30)
        return put_bytes(bucket_, key, data, content_type)

    lake.put_bytes = slow_package_of_a
    frame = pd.DataFrame({"source": ["k"], "reason": ["corrupt_image"], "detail": [""], "etag": ["e"]})
    a = threading.Thread(target=put_table, args=(lake, bucket, "quarantine/images_q.csv", frame), name="writer-a")
    a.start()
    while not any(o.key.endswith("images_q.csv") for o in lake.list(bucket, "quarantine/")):
        a.join(0.01)
    put_table(lake, bucket, "quarantine/titles_q.csv", frame)
    b_done.set()
    a.join(30)
    package = json.loads(lake.get_bytes(bucket, "quarantine/" + DATA_PACKAGE))
    assert [r["path"] for r in package["resources"]] == ["images_q.csv", "titles_q.csv"]


def test_an_artifacts_tables_get_their_package_which_is_no_part_of_the_artifact(tmp_path):
    from clipfood_assets.lake.artifacts import Bundle, read_bundle, write_bundle

    lake = LocalLake(tmp_path / "lake")
    cases = _datasets()["datasets/failure_cases.csv"]
    manifest = write_bundle(lake, BUCKET, "experiments/report/", "comparison_report", Bundle({
        "failure_cases.csv": cases, "tables/metrics.csv": cases[["metric", "value"]], "report.md": "# r\n"}))
    assert DATA_PACKAGE not in {f["name"] for f in manifest["files"]}
    for folder, names in (("experiments/report", ["failure_cases"]), ("experiments/report/tables", ["metrics"])):
        assert list(read_tables(lake.root / BUCKET / folder)) == names
    put_table(lake, BUCKET, "experiments/report/other.csv", cases)  # another writer's table in the folder
    bundle = read_bundle(lake, BUCKET, "experiments/report/", "comparison_report")  # still complete
    pd.testing.assert_frame_equal(bundle.read("failure_cases.csv"), read_tables(lake.root / BUCKET /
                                                                                "experiments/report")["failure_cases"])
