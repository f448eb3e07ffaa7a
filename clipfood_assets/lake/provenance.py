"""Which trusted-zone version each data-zone artifact was built from, recorded in the lake.

The lake is the truth and a Dagster instance only its index: a new instance (a fresh PostgreSQL
under `docker compose up`, `dagster dev` without DAGSTER_HOME) over a lake that is already built
must see that it is built, and launch nothing.
"""

from __future__ import annotations

import json
import time

from clipfood_assets.lake.base import Lake, ObjectNotFound
from clipfood_assets.lake.layout import BUILT_FROM_PREFIX, FINE_TUNING_ZONE, validate_run_key

# What a refresh rebuilds, in the order it writes them: the zone is built from a version when
# every one of them records that version.
REFRESHED_ARTIFACTS = ("positive_pairs", "augmented_training_pairs", "baseline_results")


def _key(artifact: str) -> str:
    return f"{BUILT_FROM_PREFIX}{validate_run_key(artifact)}.json"


def record_built_from(lake: Lake, artifact: str, trusted_zone_version: str) -> None:
    """Written after ``artifact`` itself is stored, so a crash in between leaves the older record."""
    body = {"artifact": artifact, "trusted_zone_version": trusted_zone_version, "recorded_at": time.time()}
    lake.put_bytes(FINE_TUNING_ZONE, _key(artifact), json.dumps(body).encode(), "application/json")


def built_from(lake: Lake, artifact: str) -> str | None:
    """The trusted-zone version ``artifact`` was last built from; None if never recorded (or unreadable)."""
    try:
        body = json.loads(lake.get_bytes(FINE_TUNING_ZONE, _key(artifact)))
    except ObjectNotFound:
        return None
    except ValueError:
        return None  # a damaged record: treated as never built, so the next refresh rewrites it
    version = body.get("trusted_zone_version") if isinstance(body, dict) else None
    return version if isinstance(version, str) else None


def zone_built_from(lake: Lake) -> str | None:
    """The version the data zone and the baseline were all built from, or None when they disagree
    (a refresh that stopped half-way) or one was never built."""
    versions = {built_from(lake, artifact) for artifact in REFRESHED_ARTIFACTS}
    return versions.pop() if len(versions) == 1 and None not in versions else None
