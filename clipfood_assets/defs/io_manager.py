"""The zone I/O manager: asset values stored in the lake under the original notebooks' file names.

An asset says where it lives with definition metadata:
  `zone_key`    one object (DataFrame -> CSV, dict/list -> JSON or YAML by suffix), or
  `zone_prefix` a multi-file artifact (a `Bundle`), manifest written last;
               `{run}` in the prefix is replaced by the experiment-run partition key.
No value is ever pickled.
"""


from typing import Any

import dagster as dg
import pandas as pd

from clipfood_assets.defs.resources import LakeResource
from clipfood_assets.lake.artifacts import Bundle, decode, encode, read_bundle, write_bundle
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, validate_run_key
from clipfood_assets.lake.tables import write_table_package


def zone_object(key: str, zone: str = FINE_TUNING_ZONE) -> dict[str, str]:
    return {"zone": zone, "zone_key": key}


BUNDLE_FORMAT = "files under the prefix, manifest written last"


def zone_artifact(prefix: str, zone: str = FINE_TUNING_ZONE) -> dict[str, str]:
    """A multi-file artifact the I/O manager stores as a bundle (lake/artifacts.py)."""
    return {"zone": zone, "zone_prefix": prefix, "zone_format": BUNDLE_FORMAT}


def _location(definition_metadata: dict[str, Any], partition_key: str | None) -> tuple[str, str | None, str | None]:
    meta = definition_metadata or {}
    zone = meta.get("zone", FINE_TUNING_ZONE)
    key = meta.get("zone_key")
    prefix = meta.get("zone_prefix")
    if prefix and "{run}" in prefix:
        if partition_key is None:
            raise dg.DagsterInvariantViolationError(f"{prefix} needs an experiment-run partition")
        prefix = prefix.replace("{run}", validate_run_key(partition_key))
    if not key and not prefix:
        raise dg.DagsterInvariantViolationError("asset has no zone_key or zone_prefix metadata")
    return zone, key, prefix


class ZoneIOManager(dg.ConfigurableIOManager):
    lake: dg.ResourceDependency[LakeResource]

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        zone_lake = self.lake.get_lake()
        partition = context.asset_partition_key if context.has_asset_partitions else None
        zone, key, prefix = _location(context.definition_metadata, partition)
        if prefix:
            if not isinstance(obj, Bundle):
                raise TypeError(f"{context.asset_key.to_user_string()} stores a Bundle under {prefix}, got {type(obj)}")
            manifest = write_bundle(zone_lake, zone, prefix, context.asset_key.path[-1], obj)
            context.add_output_metadata(
                {
                    "uri": dg.MetadataValue.path(zone_lake.uri(zone, prefix)),
                    "files": dg.MetadataValue.json({f["name"]: f["size"] for f in manifest["files"]}),
                    "size_bytes": sum(f["size"] for f in manifest["files"]),
                }
            )
            return
        data, content_type = encode(key, obj)
        zone_lake.put_bytes(zone, key, data, content_type)
        meta: dict[str, Any] = {"uri": dg.MetadataValue.path(zone_lake.uri(zone, key)), "size_bytes": len(data)}
        if isinstance(obj, pd.DataFrame):
            write_table_package(zone_lake, zone, key.rpartition("/")[0])  # its schema beside it, for other tools
            meta["dagster/row_count"] = len(obj)
        context.add_output_metadata(meta)

    def load_input(self, context: dg.InputContext) -> Any:
        zone_lake = self.lake.get_lake()
        upstream = context.upstream_output
        partition = context.asset_partition_key if context.has_asset_partitions else None
        zone, key, prefix = _location(upstream.definition_metadata if upstream else {}, partition)
        if prefix:
            return read_bundle(zone_lake, zone, prefix, context.asset_key.path[-1])
        return decode(key, zone_lake.get_bytes(zone, key))
