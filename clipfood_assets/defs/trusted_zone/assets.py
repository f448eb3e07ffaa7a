"""The trusted zone, observed: recipes and images that other teams' pipelines write."""

import dagster as dg

from clipfood_assets.defs.resources import LakeResource
from clipfood_assets.lake.base import Lake
from clipfood_assets.lake.fingerprint import ZoneFingerprint, fingerprint_trusted_zone
from clipfood_assets.lake.layout import RECIPES_KEY, TRUSTED_IMAGES_PREFIX, TRUSTED_ZONE

GROUP = "trusted_zone"

# Keys, not module-level specs: the defs folder's autoloading collects every AssetSpec a module holds.
RECIPES = dg.AssetKey("trusted_recipes")
IMAGES = dg.AssetKey("trusted_images")


def _specs() -> list[dg.AssetSpec]:
    return [
        dg.AssetSpec(
            RECIPES,
            group_name=GROUP,
            description=f"Recipe documents, one JSON object per line: {TRUSTED_ZONE}/{RECIPES_KEY}. Versioned by "
            "the object's ETag.",
            metadata={"zone": TRUSTED_ZONE, "zone_key": RECIPES_KEY},
            kinds={"json"},
        ),
        dg.AssetSpec(
            IMAGES,
            group_name=GROUP,
            description=f"Normalized food photos {TRUSTED_ZONE}/{TRUSTED_IMAGES_PREFIX}…__<recipeId>_<n>.jpg. "
            "Versioned by a digest of every key and ETag.",
            metadata={"zone": TRUSTED_ZONE, "zone_prefix": TRUSTED_IMAGES_PREFIX},
            kinds={"jpeg"},
        ),
    ]


def zone_versions(zone_lake: Lake, fingerprint: ZoneFingerprint) -> dict[dg.AssetKey, tuple[str, dict]]:
    """Data version and metadata of each trusted-zone asset. One owner for both the observation
    the UI runs and the ones the sensor records, so they always agree."""
    recipes_meta = ({"present": False} if fingerprint.recipes_etag is None else
                    {"uri": dg.MetadataValue.path(zone_lake.uri(TRUSTED_ZONE, RECIPES_KEY))})
    return {
        RECIPES: (fingerprint.recipes_etag or "missing", recipes_meta),
        IMAGES: (fingerprint.images_digest[:16], {
            "images": fingerprint.n_images,
            "size_bytes": fingerprint.images_bytes,
            "uri": dg.MetadataValue.path(zone_lake.uri(TRUSTED_ZONE, TRUSTED_IMAGES_PREFIX)),
        }),
    }


@dg.multi_observable_source_asset(specs=_specs(), name="trusted_zone", group_name=GROUP, can_subset=True)
def trusted_zone(context: dg.AssetExecutionContext, lake: LakeResource):
    """Data versions from ETags, so the UI shows what changed upstream and what is stale.

    Either asset can be observed alone; both come from one listing of the zone.
    """
    zone_lake = lake.get_lake()
    for key, (version, metadata) in zone_versions(zone_lake, fingerprint_trusted_zone(zone_lake)).items():
        if key in context.selected_asset_keys:
            yield dg.ObserveResult(asset_key=key, data_version=dg.DataVersion(version), metadata=metadata)
