"""Quarantine records: what was set aside from the trusted zone, and why.

A record is never silently dropped: every input that cannot become a training pair
lands here with a short, stable reason code so counts can be compared across runs.
"""

from __future__ import annotations

from collections import Counter
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


def quarantine_frame(records: Iterable[QuarantineRecord]) -> pd.DataFrame:
    """Records as a DataFrame with columns ``source, reason, detail`` (empty frame keeps the columns)."""
    rows = [(r.source, r.reason, r.detail) for r in records]
    return pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)


def reason_counts(records: Iterable[QuarantineRecord]) -> dict[str, int]:
    """Number of records per reason code, keys sorted for stable output."""
    counts = Counter(r.reason for r in records)
    return {reason: counts[reason] for reason in sorted(counts)}
