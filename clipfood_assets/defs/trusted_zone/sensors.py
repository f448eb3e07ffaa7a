"""Rebuild when the trusted zone changes: any image or recipes.jsonl added, changed or deleted."""


import hashlib
import json

import dagster as dg

from clipfood_assets.defs.jobs import refresh_job
from clipfood_assets.defs.resources import LakeResource
from clipfood_assets.lake.fingerprint import fingerprint_trusted_zone


def describe_change(before: dict | None, after: dict) -> str:
    if before is None:
        return "first observation"
    parts = []
    if before.get("recipes_etag") != after["recipes_etag"]:
        parts.append("recipes.jsonl " + ("deleted" if after["recipes_etag"] is None else "changed"))
    if before.get("images_digest") != after["images_digest"]:
        delta = after["n_images"] - before.get("n_images", 0)
        parts.append(f"images changed ({before.get('n_images', 0)} -> {after['n_images']}, {delta:+d})")
    return "; ".join(parts)


@dg.sensor(
    job=refresh_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Lists the trusted zone (streamed) and compares a fingerprint of every key and ETag with the last "
    "one; on any change it rebuilds the data zone and the baseline.",
)
def trusted_zone_sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
    current = fingerprint_trusted_zone(lake.get_lake()).to_dict()
    previous_cursor = context.cursor
    before = json.loads(previous_cursor) if previous_cursor else None
    if before == current:
        return dg.SkipReason("trusted zone unchanged")
    context.update_cursor(json.dumps(current, sort_keys=True))
    if current["recipes_etag"] is None:
        return dg.SkipReason("trusted zone has no recipes.jsonl yet")
    change = describe_change(before, current)
    # Keyed by the transition, not the state: a zone reverted to an earlier state (A -> B -> A)
    # is still rebuilt, where a state key would be deduplicated by Dagster.
    transition = hashlib.sha256(f"{previous_cursor}|{json.dumps(current, sort_keys=True)}".encode()).hexdigest()
    return dg.RunRequest(
        run_key=transition[:24],
        tags={"clipfood/trusted_zone_change": change[:200], "clipfood/images": str(current["n_images"])},
    )
