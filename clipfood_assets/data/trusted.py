"""Reading the trusted zone: recipes.jsonl, image keys and image bytes.

Everything here is defensive: the trusted zone is written by another team and may
contain anything. Bad inputs become :class:`QuarantineRecord` s with a stable reason,
good inputs become tidy DataFrames. Nothing here talks to storage; callers stream bytes in.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from clipfood_assets.data.decode import DEFAULT_MAX_PIXELS, ImageTooLarge, decode_rgb, open_checked
from clipfood_assets.data.parallel import bounded_map
from clipfood_assets.data.quarantine import QuarantineRecord

log = logging.getLogger(__name__)

RECIPES_KEY = "documents/recipes.jsonl"
IMAGES_PREFIX = "images/"
TITLE_FIELDS = ("title_text_raw", "title_text_clean", "title")
DEFAULT_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_DETAIL_CHARS = 200
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_JSON = json.JSONDecoder()


def _truncate(text: str, limit: int = _DETAIL_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, ending in "..." when it was cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_storable_text(text: str) -> bool:
    """True if UTF-8 can hold ``text``: no lone surrogate (JSON's ``"\\ud83c"``, or a file name
    that was not UTF-8). Such text would fail every later write (CSV, S3 key, metadata)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def normalize_caption(text: str) -> str:
    """Collapse whitespace (and control characters) to single spaces and strip."""
    if not text.isprintable():  # rare: only then pay for the regex
        text = _CONTROL_CHARS.sub(" ", text)
    return " ".join(text.split())


# ---------------------------------------------------------------------------
# recipes.jsonl
# ---------------------------------------------------------------------------


def iter_lines(chunks: Iterable[bytes], max_line_bytes: int = 1_000_000) -> Iterator[bytes]:
    """Split a byte stream (e.g. ``response.stream(64 * 1024)``) into lines, bounded in memory.

    A line longer than ``max_line_bytes`` is yielded cut to ``max_line_bytes + 1`` bytes (the
    rest is skipped unread into memory), so :func:`parse_recipes` quarantines it as
    ``line_too_long`` without ever holding a multi-gigabyte line.
    """
    buf = bytearray()
    overflow = False
    for chunk in chunks:
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            piece = chunk[start:] if newline < 0 else chunk[start:newline]
            if not overflow:
                buf += piece
                if len(buf) > max_line_bytes:
                    del buf[max_line_bytes + 1 :]
                    overflow = True
            if newline < 0:
                break
            yield bytes(buf)
            buf.clear()
            overflow = False
            start = newline + 1
    if buf:
        yield bytes(buf)


def _line_source(source: str, line_no: int) -> str:
    return f"{source}:line {line_no}"


def _coerce_id(raw: object) -> tuple[str | None, str, str]:
    """Return (recipe_id, reason, detail); recipe_id is None when the id is rejected."""
    if raw is None:
        return None, "missing_id", "no 'id' field (or null)"
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        return None, "bad_id_type", f"id has type {type(raw).__name__}: {_truncate(repr(raw), 80)}"
    recipe_id = str(raw)
    if not recipe_id:
        return None, "missing_id", "empty id"
    if not is_storable_text(recipe_id):
        return None, "unencodable_text", f"id {_truncate(ascii(recipe_id), 80)} holds a lone surrogate: UTF-8 cannot store it"
    # Image keys spell the id as ``__<id>_<n>``; an id with '/', '__', control characters or
    # surrounding blanks could never be matched (or would be ambiguous), so it is rejected here.
    if (
        "/" in recipe_id
        or "__" in recipe_id
        or _CONTROL_CHARS.search(recipe_id)
        or recipe_id != recipe_id.strip()
    ):
        return None, "bad_id_value", f"id cannot appear in an image key: {_truncate(repr(recipe_id), 80)}"
    return recipe_id, "", ""


def _first_title(obj: dict) -> tuple[str | None, str]:
    """(title, field it came from); (None, field) when the first usable title cannot be stored."""
    for field in TITLE_FIELDS:
        value = obj.get(field)
        if isinstance(value, str):
            title = normalize_caption(value)
            if title:
                # A title UTF-8 cannot hold is this record's problem: quarantine it rather than
                # fall back to another field that may describe something else.
                return (title, field) if is_storable_text(title) else (None, field)
    return None, ""


def _parse_line(raw: bytes, max_line_bytes: int) -> tuple[str, str] | tuple[None, str, str]:
    """Parse one non-blank line: (recipe_id, caption) or (None, reason, detail)."""
    if len(raw) > max_line_bytes:
        return None, "line_too_long", f"line has more than {max_line_bytes} bytes"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, "not_utf8", _truncate(str(exc))
    text = text.lstrip("\ufeff")  # a UTF-8 BOM (usually on line 1) is not part of the JSON
    try:
        obj = _JSON.decode(text)
    except (ValueError, RecursionError) as exc:  # ValueError also covers >4300-digit integers
        return None, "malformed_json", _truncate(f"{type(exc).__name__}: {exc}")
    if not isinstance(obj, dict):
        return None, "not_an_object", f"JSON {type(obj).__name__}, expected an object"
    recipe_id, reason, detail = _coerce_id(obj.get("id"))
    if recipe_id is None:
        return None, reason, detail
    caption, field = _first_title(obj)
    if caption is None and field:
        return None, "unencodable_text", _truncate(
            f"id {recipe_id!r}: {field} holds a lone surrogate, UTF-8 cannot store it: {ascii(obj[field])}"
        )
    if caption is None:
        return None, "missing_title", f"id {_truncate(recipe_id, 80)!r}: none of {', '.join(TITLE_FIELDS)} is a non-empty string"
    return recipe_id, caption


def parse_recipes(
    lines: Iterable[bytes],
    max_line_bytes: int = 1_000_000,
    source: str = RECIPES_KEY,
) -> tuple[pd.DataFrame, list[QuarantineRecord]]:
    """Parse recipes.jsonl lines (raw bytes, streamed) into ``recipe_id, caption``.

    caption is the first non-empty of title_text_raw / title_text_clean / title, whitespace
    normalized. Integer ids become strings. Unknown extra fields are ignored, not rejected.
    Blank lines are skipped. Lines repeating an id with the same caption collapse to one row
    (counted in ``df.attrs["exact_duplicates"]``); an id seen with different captions is
    quarantined on every line (``conflicting_duplicate_id``): we cannot tell which is right.
    Rows are sorted by recipe_id. ``df.attrs`` also holds ``lines_read`` (non-blank lines).
    """
    ids: list[str] = []
    captions: list[str] = []
    line_nos: list[int] = []
    rejected: list[tuple[int, QuarantineRecord]] = []
    lines_read = 0
    for line_no, raw in enumerate(lines, start=1):
        if isinstance(raw, str):  # a text-mode stream; bytes are the norm
            raw = raw.encode("utf-8", "surrogateescape")
        raw = raw.rstrip(b"\r\n")
        if not raw.strip():
            continue
        lines_read += 1
        parsed = _parse_line(raw, max_line_bytes)
        if parsed[0] is None:
            rejected.append((line_no, QuarantineRecord(_line_source(source, line_no), parsed[1], parsed[2])))
            continue
        ids.append(parsed[0])
        captions.append(parsed[1])
        line_nos.append(line_no)

    rows = pd.DataFrame({"recipe_id": ids, "caption": captions, "line": line_nos}, columns=["recipe_id", "caption", "line"])
    rows = rows.astype({"recipe_id": "str", "caption": "str", "line": "int64"})
    distinct = rows.drop_duplicates(["recipe_id", "caption"])
    captions_per_id = distinct.groupby("recipe_id", sort=False)["caption"].size()
    conflicting_ids = captions_per_id.index[captions_per_id > 1]
    is_conflict = rows["recipe_id"].isin(conflicting_ids)
    if is_conflict.any():
        conflicts = rows[is_conflict]
        lines_by_id = conflicts.groupby("recipe_id")["line"].apply(list).to_dict()
        for rec in conflicts.itertuples(index=False):
            other = [n for n in lines_by_id[rec.recipe_id] if n != rec.line]
            detail = _truncate(f"id {rec.recipe_id!r} also on line(s) {other} with a different title; caption here: {rec.caption!r}")
            rejected.append((rec.line, QuarantineRecord(_line_source(source, rec.line), "conflicting_duplicate_id", detail)))

    kept = rows[~is_conflict]
    recipes = kept.drop_duplicates("recipe_id", keep="first")
    recipes = recipes.sort_values("recipe_id", kind="stable").reset_index(drop=True)[["recipe_id", "caption"]]
    recipes.attrs["exact_duplicates"] = int(len(kept) - len(recipes))
    recipes.attrs["lines_read"] = lines_read
    rejected.sort(key=lambda item: item[0])
    log.info(
        "parsed %d recipes from %d lines (%d quarantined, %d exact duplicates)",
        len(recipes), lines_read, len(rejected), recipes.attrs["exact_duplicates"],
    )
    return recipes, [record for _, record in rejected]


# ---------------------------------------------------------------------------
# image keys
# ---------------------------------------------------------------------------

# One key segment: no '/', no backslash, no control characters.
_SEG = r"[^/\x00-\x1f\x7f\\]"
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]|^/|//|(?:^|/)\.\.?(?:/|\Z)")


def _good_key_pattern(prefix: str, extensions: tuple[str, ...]) -> str:
    exts = "|".join(re.escape(ext.lower().lstrip(".")) for ext in extensions)
    # Folders are allowed but not '.'/'..'; the recipe id is everything between the LAST '__'
    # and the final '_<digits>.<ext>' (greedy stem, lazy id, anchored end: unambiguous).
    return (
        rf"^{re.escape(prefix)}(?:(?!\.\.?/){_SEG}+/)*{_SEG}*__"
        rf"(?P<recipe_id>{_SEG}+?)_(?P<position>\d{{1,9}})\.(?i:{exts})\Z"
    )


def _classify_bad_keys(bad: pd.Series, prefix: str, extensions: tuple[str, ...]) -> list[QuarantineRecord]:
    """Reason for each key that failed the fast good-key match (vectorized on the subset)."""
    is_str = bad.map(lambda v: isinstance(v, str))
    text = bad.where(is_str, "").astype(object)
    unsafe = is_str & text.str.contains(_UNSAFE, regex=True).fillna(False).astype(bool)
    basename = text.str.rsplit("/", n=1).str[-1]
    suffix = basename.str.extract(r"(\.[^.]*)\Z", expand=False).fillna("").str.lower()
    allowed = {ext.lower() for ext in extensions}
    outside = is_str & ~unsafe & ~text.str.startswith(prefix)
    bad_ext = is_str & ~unsafe & ~outside & ~suffix.isin(allowed)
    reasons = np.select(
        [~is_str, unsafe, outside, bad_ext],
        ["unparseable_key", "unsafe_key", "unparseable_key", "bad_extension"],
        default="unparseable_key",
    )
    details = {
        "unsafe_key": "key has '..' or '.' segments, an absolute path, '//', a backslash or control characters",
        "bad_extension": f"extension not in {sorted(allowed)}",
        "unparseable_key": f"expected {prefix}<name>__<recipeId>_<position>.<ext>",
    }
    sources = [v if isinstance(v, str) else repr(v) for v in bad.tolist()]
    # repr() keeps control characters visible (and out of logs/CSVs as raw bytes).
    sources = [repr(s)[1:-1] if _CONTROL_CHARS.search(s) else s for s in sources]
    return [QuarantineRecord(src, reason, details[reason]) for src, reason in zip(sources, reasons.tolist())]


def parse_image_keys(
    keys: Iterable[str],
    allowed_extensions: tuple[str, ...] = DEFAULT_IMAGE_EXTENSIONS,
    prefix: str = IMAGES_PREFIX,
) -> tuple[pd.DataFrame, list[QuarantineRecord]]:
    """Parse trusted-zone image keys ``images/<anything>__<recipeId>_<position>.<ext>``.

    Vectorized: anchored regex extractions over all keys (the fast path); only keys that
    fail them are classified further (``unsafe_key``, ``bad_extension``, ``unparseable_key``).
    Returns ``image_key, recipe_id, position`` in input order (repeated keys kept once,
    counted in ``df.attrs["duplicate_keys"]``). Extensions match case-insensitively.
    """
    series = keys if isinstance(keys, pd.Series) else pd.Series(list(keys), dtype=object)
    series = series.astype(object).reset_index(drop=True)
    n_input = len(series)
    if series.is_monotonic_increasing:  # listings come sorted: repeats are neighbours
        array = series.to_numpy()
        series = series[np.concatenate(([True], array[1:] != array[:-1]))] if len(array) else series
    else:
        series = series.drop_duplicates()
    records: list[QuarantineRecord] = []
    # Keys UTF-8 cannot hold (a local file name that was not UTF-8 lists with lone surrogates)
    # would fail every later write; only non-ASCII keys need the full check.
    non_ascii = ~series.str.isascii().astype("boolean").fillna(True).astype(bool)
    if non_ascii.any():
        unstorable = series[non_ascii][~series[non_ascii].map(is_storable_text)]
        records += [
            QuarantineRecord(ascii(key)[1:-1], "unencodable_key", "key holds a lone surrogate (not UTF-8)")
            for key in unstorable
        ]
        series = series.drop(unstorable.index)
    pattern = _good_key_pattern(prefix, tuple(allowed_extensions))
    # Two single-group extractions are cheaper in pandas than one two-group extraction.
    recipe_ids = series.str.extract(pattern.replace("(?P<position>", "(?:"), expand=False)
    good = recipe_ids.notna()
    if (~good).any():
        records += _classify_bad_keys(series[~good], prefix, tuple(allowed_extensions))
    good_keys = series[good]
    positions = good_keys.str.extract(pattern.replace("(?P<recipe_id>", "(?:"), expand=False)
    images = pd.DataFrame(
        {
            "image_key": good_keys.astype("str").to_numpy(),
            "recipe_id": recipe_ids[good].astype("str").to_numpy(),
            "position": positions.astype("int64").to_numpy(),
        }
    )
    images.attrs["duplicate_keys"] = int(n_input - len(series))
    log.info("parsed %d image keys (%d quarantined)", len(images), len(records))
    return images, records


# ---------------------------------------------------------------------------
# image bytes
# ---------------------------------------------------------------------------


def validate_image(
    key: str, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 8
) -> QuarantineRecord | None:
    """Return a QuarantineRecord if ``data`` is not a usable image, else None.

    Checks: empty bytes, not an image (or a format outside JPEG/PNG/WEBP), declared size over
    ``max_pixels`` (checked from the header, before decoding, so bombs are never allocated),
    a side under ``min_side``, ``verify`` for structure, then the full decode that every later
    step uses (:func:`~clipfood_assets.data.decode.decode_rgb`), so a photo that passes here
    is one the model, the augmentation and the report can all read, with the same pixels.
    Alpha, palette, CMYK, 16-bit, grayscale and EXIF-rotated images are valid.
    """
    if not data:
        return QuarantineRecord(key, "empty_image", "zero bytes")
    try:
        # PIL's own bomb check runs at open(); make its warning an error too. The effective limit
        # is min(max_pixels, PIL's threshold); our default (40 MP) is below PIL's (89 MP).
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_checked(data, max_pixels) as image:
                width, height = image.size
                if min(width, height) < min_side:
                    return QuarantineRecord(key, "image_too_small", f"{width}x{height}, min side {min_side}")
                image.verify()  # structure and checksums; the object is unusable afterwards
            decode_rgb(data, max_pixels=max_pixels)  # full decode: catches truncation verify() misses
    except (ImageTooLarge, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return QuarantineRecord(key, "image_too_large", _truncate(str(exc)))
    except UnidentifiedImageError as exc:
        # A known signature PIL cannot open is a damaged image (e.g. cut after the header).
        reason = "corrupt_image" if data.startswith(_IMAGE_SIGNATURES) else "not_an_image"
        return QuarantineRecord(key, reason, _truncate(str(exc)))
    except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted bytes means corrupt
        return QuarantineRecord(key, "corrupt_image", _truncate(f"{type(exc).__name__}: {exc}"))
    return None


def validate_images(
    keys: Iterable[str],
    read: Callable[[str], bytes],
    workers: int = 4,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> list[QuarantineRecord]:
    """Read and validate many images in parallel; return the quarantine records (input order).

    ``read(key) -> bytes`` is the storage access (e.g. a lake client's get); a read that raises
    KeyError/FileNotFoundError (object gone) becomes an ``unreadable_image`` record; any other
    error (storage down) propagates.
    """
    key_list = list(keys)

    def check(key: str) -> QuarantineRecord | None:
        try:
            data = read(key)
        except (KeyError, FileNotFoundError) as exc:
            # Gone between listing and reading: a data problem. Any other storage error
            # (server down) propagates, so an outage never quarantines good images.
            return QuarantineRecord(key, "unreadable_image", _truncate(f"{type(exc).__name__}: {exc}"))
        return validate_image(key, data, max_pixels=max_pixels, min_side=min_side)

    results = bounded_map(check, key_list, workers=workers, total=len(key_list), progress=progress)
    records = [record for record in results if record is not None]
    log.info("validated %d images (%d quarantined)", len(key_list), len(records))
    return records
