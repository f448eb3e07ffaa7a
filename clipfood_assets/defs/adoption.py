"""A new instance over a lake that is already built records what the lake holds.

The lake is the truth and the instance its index: after `docker compose up` on an empty PostgreSQL
over a lake filled by `clipfood demo`, the UI must show the data zone, M0, the runs and the report
as materialized (not "never materialized", which would also make every launch warn that upstream
assets are missing). Each asset says where it lives in its definition metadata (``zone``,
``zone_key`` or ``zone_prefix``); an asset the lake holds and the instance has never seen gets one
runless materialization that says it was adopted, with the lake's URI.
"""

from collections.abc import Iterable

import dagster as dg

from clipfood_assets.defs.io_manager import BUNDLE_FORMAT
from clipfood_assets.lake.artifacts import manifest_key
from clipfood_assets.lake.base import Lake
from clipfood_assets.lake.layout import validate_run_key

ADOPTED = "adopted from the lake"


def lake_uri(zone_lake: Lake, asset: str, metadata: dict, partition: str | None = None) -> str | None:
    """Where the lake holds ``asset`` (complete), or None. A bundle counts once its manifest is
    written; a plain object once it exists; a folder of objects once it holds one."""
    zone, key, prefix = metadata.get("zone"), metadata.get("zone_key"), metadata.get("zone_prefix")
    zone = getattr(zone, "value", zone)
    key, prefix = getattr(key, "value", key), getattr(prefix, "value", prefix)
    fmt = getattr(metadata.get("zone_format"), "value", metadata.get("zone_format"))
    if not zone or not (key or prefix):
        return None
    if prefix and "{run}" in prefix:
        if partition is None:
            return None
        prefix = prefix.replace("{run}", validate_run_key(partition))
    if key:
        return zone_lake.uri(zone, key) if zone_lake.exists(zone, key) else None
    if fmt == BUNDLE_FORMAT:
        return zone_lake.uri(zone, prefix) if zone_lake.exists(zone, manifest_key(prefix, asset)) else None
    return zone_lake.uri(zone, prefix) if next(iter(zone_lake.list(zone, prefix, limit=1)), None) else None


def adoption_events(instance: dg.DagsterInstance, zone_lake: Lake, asset_graph, keys: Iterable[dg.AssetKey],
                    partition: str | None = None, **extra_metadata) -> list[dg.AssetMaterialization]:
    """One materialization per asset of ``keys`` that this instance has never recorded (for this
    partition) and the lake holds."""
    events = []
    for key in keys:
        if not asset_graph.has(key):
            continue
        if partition is None:
            known = instance.get_latest_materialization_event(key) is not None
        else:
            known = bool(instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records)
        if known:
            continue
        uri = lake_uri(zone_lake, key.path[-1], dict(asset_graph.get(key).metadata or {}), partition)
        if uri is not None:
            events.append(dg.AssetMaterialization(
                asset_key=key, partition=partition, description=f"{ADOPTED}: built before this instance knew of it",
                metadata={ADOPTED: dg.MetadataValue.path(uri), **extra_metadata}))
    return events


# What a new instance adopts: the zones the platform builds from the trusted zone (the exploitation
# zone's index lives in Chroma, not the lake, and rebuilds itself by ETag).
ADOPTED_GROUPS = frozenset({"data_zone", "model_zone", "report"})


def adoptable_keys(asset_graph, *, partitioned: bool) -> list[dg.AssetKey]:
    return sorted((key for key in asset_graph.materializable_asset_keys
                   if asset_graph.get(key).group_name in ADOPTED_GROUPS
                   and asset_graph.get(key).is_partitioned == partitioned), key=lambda k: k.to_user_string())
