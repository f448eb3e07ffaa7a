"""The one schema of every tabular artifact (CSV) in the lake, and the reader/writer that apply it.

pandas guesses column types when it reads a CSV: the recipe ids ``01``, ``1`` and ``0012e5``
come back as the numbers 1.0, 1.0 and 1200.0, and a caption ``NA`` as a missing value. So
nothing here guesses: every column an artifact may hold is declared once below, ids, keys,
captions and other text are strings end to end, and both directions go through it.

Readers without this package get the same schema from the lake: each folder of tables holds a
``datapackage.json`` (a Frictionless Data Package, v2) describing every CSV in it with its Table
Schema, generated from the declarations below.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping

import pandas as pd

from clipfood_assets.lake.base import Lake, ObjectInfo, ObjectNotFound

TEXT = "str"

# Every column of every CSV artifact, with its type. Text columns round-trip byte for byte
# ("" stays "", "NA" stays "NA", "007" stays "007"); integer columns refuse anything else.
COLUMN_TYPES: Mapping[str, str] = {
    # pairs, augmented pairs, negatives (datasets/*.csv)
    "recipe_id": TEXT,
    "image_key": TEXT,
    "caption": TEXT,
    "label": "int64",
    "augmentation": TEXT,
    "source_image_key": TEXT,
    "negative_recipe_id": TEXT,
    # augmentation plan (render_all's input/output)
    "kind": TEXT,
    "variant": "int64",
    "text_ops": TEXT,
    "image_ops": TEXT,
    "seed": "int64",
    "error": TEXT,
    # trusted-zone images
    "position": "int64",
    # quarantine/pairing_quarantine.csv
    "source": TEXT,
    "reason": TEXT,
    "detail": TEXT,
    # record of the image copies (change detection by the source's identity)
    "source_etag": TEXT,
    "source_size": "int64",
    "copy_etag": TEXT,
    # fine-tuning-zone/preprocessed_images/<digest>/index.csv and failures.csv (modeling/image_store.py)
    "shard_row": "int64",
    "decoder": TEXT,
    # experiments/report/failure_cases.csv (run keys like "007" are text)
    "run": TEXT,
    "direction": TEXT,
    "query": TEXT,
    "m0_rank": "Int64",
    "m1_rank": "Int64",
    "rank_change": "Int64",
    # exploitation-zone embedding indexes and their quarantine: kept as text, as they are compared
    # with listings' ETags and sizes as written (exploitation/embeddings.py)
    "item_id": TEXT,
    "object_key": TEXT,
    "etag": TEXT,
    "title": TEXT,
    "size_bytes": TEXT,
    "width": TEXT,
    "height": TEXT,
    "shard": TEXT,
    "row": TEXT,
    # metric tables (name, value)
    "metric": TEXT,
    "value": "float64",
}


class SchemaError(ValueError):
    """A table that does not fit the declared schema (undeclared column, value of the wrong type)."""


def _undeclared(columns) -> list[str]:
    return [str(c) for c in columns if c not in COLUMN_TYPES]


def conform(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every column cast to its declared type (raises SchemaError if it cannot be)."""
    undeclared = _undeclared(frame.columns)
    if undeclared:
        raise SchemaError(
            f"columns {undeclared} have no declared type: add them to clipfood_assets.lake.tables.COLUMN_TYPES"
        )
    out = {}
    for column in frame.columns:
        kind = COLUMN_TYPES[column]
        values = frame[column]
        if kind == TEXT:
            out[column] = values.astype(TEXT)
            continue
        try:
            if (values.dtype == object or pd.api.types.is_string_dtype(values.dtype)) and kind == "float64":
                text = values.astype(TEXT).str.strip()
                out[column] = pd.to_numeric(text.mask(text == "", None), errors="raise").astype(kind)
            elif values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
                text = values.astype(TEXT).str.strip()
                missing = values.isna() | (text == "")
                if missing.any() and kind == "int64":
                    raise ValueError(f"{int(missing.sum())} empty value(s)")
                # Decimal integers only: int() would also take "1_000", pandas "1e3" or "1.0".
                bad = ~missing & ~text.str.fullmatch(r"[+-]?\d+").fillna(False).astype(bool)
                if bad.any():
                    raise ValueError(f"not an integer: {text[bad].iloc[0]!r}")
                numbers = pd.Series(
                    [None if m else int(t) for m, t in zip(missing, text)], index=values.index, dtype=object
                )
                out[column] = numbers.astype(kind)
            else:
                out[column] = values.astype(kind)
        except (ValueError, TypeError, OverflowError) as exc:
            raise SchemaError(f"column {column!r} must be {kind}: {exc}") from None
    return pd.DataFrame(out, index=frame.index)


def write_table(frame: pd.DataFrame) -> bytes:
    """CSV bytes (UTF-8, no index) of ``frame`` in its declared schema.

    Text that UTF-8 cannot hold (a lone surrogate) is refused with the column and row named;
    the readers upstream quarantine such records, so this only fires on a bug.
    """
    # Text quoted: a bare "\r" inside a caption would otherwise end the row for a reader.
    text = conform(frame).to_csv(index=False, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        for column in frame.columns:
            if COLUMN_TYPES[column] != TEXT:
                continue
            for row, value in frame[column].items():
                if isinstance(value, str):
                    try:
                        value.encode("utf-8")
                    except UnicodeEncodeError:
                        raise SchemaError(
                            f"column {column!r} row {row}: text that UTF-8 cannot store: {value!r}"
                        ) from None
        raise


def read_table(data: bytes) -> pd.DataFrame:
    """A CSV written by :func:`write_table`, every column in its declared type.

    Every cell is read as text first (no type inference, no NA guessing), then declared
    non-text columns are converted strictly. Columns that are not declared stay text.
    """
    try:
        frame = pd.read_csv(
            io.BytesIO(data), dtype=TEXT, keep_default_na=False, na_filter=False, encoding="utf-8"
        )
    except pd.errors.EmptyDataError:
        raise SchemaError("empty CSV: not even a header row") from None
    declared = [c for c in frame.columns if c in COLUMN_TYPES]
    typed = conform(frame[declared]) if declared else frame[declared]
    for column in frame.columns:
        if column not in COLUMN_TYPES:
            typed[column] = frame[column]
    return typed[list(frame.columns)]


DATA_PACKAGE = "datapackage.json"
DATA_PACKAGE_PROFILE = "https://datapackage.org/profiles/2.0/datapackage.json"
# Table Schema's type of each declared type.
_FIELD_TYPES = {TEXT: "string", "int64": "integer", "Int64": "integer", "float64": "number"}
# Rounds of "describe, then list again" a writer makes while other writers change the folder's tables.
_PACKAGE_ROUNDS = 5


def table_schema(columns: Iterable[str]) -> dict:
    """The Frictionless Table Schema of a table with these columns, in their declared types.

    As :func:`read_table` reads them: an empty cell is a missing number, never missing text ("" is
    text); ``int64`` columns have a value in every row; undeclared columns are text.
    """
    fields = []
    for column in columns:
        kind = COLUMN_TYPES.get(column, TEXT)
        field = {"name": column, "type": _FIELD_TYPES[kind]}
        if kind == TEXT:
            field["missingValues"] = []
        elif kind == "int64":
            field["constraints"] = {"required": True}
        fields.append(field)
    return {"fields": fields, "missingValues": [""]}


def _header(lake: Lake, bucket: str, key: str) -> list[str]:
    with lake.open(bucket, key) as stream:
        head = b""
        while b"\n" not in head and (chunk := stream.read(1 << 16)):
            head += chunk
    return next(csv.reader([head.split(b"\n", 1)[0].decode("utf-8")]), [])


def _resource_name(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-") or "table"


def write_table_package(lake: Lake, bucket: str, folder: str) -> dict:
    """Write ``<folder>/datapackage.json``, describing every CSV directly in ``folder`` (the columns of its
    header, in their declared types); returns the package.

    Tables of one folder may be written at once (the image and title embeddings' quarantines): a writer
    lists the folder again after writing the package and rewrites it while the tables changed, so the
    last package written describes them all.
    """
    folder = folder.strip("/") + "/" if folder.strip("/") else ""

    def tables() -> list[tuple[str, str]]:
        return sorted((o.key, o.etag) for o in lake.list(bucket, folder)
                      if o.key.endswith(".csv") and "/" not in o.key[len(folder):])

    def resource(key: str) -> dict | None:
        try:
            columns = _header(lake, bucket, key)
        except ObjectNotFound:  # deleted since the listing: the next listing says so
            return None
        name = key[len(folder):]
        return {"name": _resource_name(name.removesuffix(".csv")), "path": name, "type": "table", "format": "csv",
                "mediatype": "text/csv", "encoding": "utf-8", "schema": table_schema(columns)}

    listed = tables()
    for _ in range(_PACKAGE_ROUNDS):
        resources = [r for r in (resource(key) for key, _ in listed) if r is not None]
        package = {"$schema": DATA_PACKAGE_PROFILE, "name": _resource_name(f"{bucket}-{folder}"),
                   "resources": resources}
        lake.put_bytes(bucket, folder + DATA_PACKAGE, json.dumps(package, indent=2).encode("utf-8"),
                       "application/json")
        again = tables()
        if again == listed:
            break
        listed = again
    return package


def put_table(lake: Lake, bucket: str, key: str, frame: pd.DataFrame) -> ObjectInfo:
    """Store ``frame`` as the CSV ``key`` (:func:`write_table`), then its folder's ``datapackage.json``."""
    info = lake.put_bytes(bucket, key, write_table(frame), "text/csv")
    write_table_package(lake, bucket, key.rpartition("/")[0])
    return info
