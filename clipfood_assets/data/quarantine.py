"""Quarantine records: what was set aside from the trusted zone, and why.

A record is never silently dropped: every input that cannot become a training pair
lands here with a short, stable reason code so counts can be compared across runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import pandas as pd

QUARANTINE_COLUMNS = ["source", "reason", "detail"]


@dataclass(frozen=True)
class QuarantineRecord:
    """One rejected input.

    source: object key (``images/x__id_0.jpg``) or a line (``documents/recipes.jsonl:line 17``).
    reason: short stable code, e.g. ``malformed_json``, ``unknown_recipe``, ``corrupt_image``.
    detail: human-readable explanation (bounded length).
    """

    source: str
    reason: str
    detail: str


def storable(text: str) -> str:
    """``text`` itself, or with what UTF-8 cannot hold (lone surrogates) written as ``\\udXXX`` escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def quarantine_frame(records: Iterable[QuarantineRecord]) -> pd.DataFrame:
    """Records as a DataFrame with columns ``source, reason, detail`` (empty frame keeps the columns).

    Every field is made storable: the quarantine is where bad text goes, so it must never be
    the thing that fails to be written.
    """
    rows = [(storable(str(r.source)), storable(str(r.reason)), storable(str(r.detail))) for r in records]
    return pd.DataFrame(rows, columns=QUARANTINE_COLUMNS).astype("str")
