"""The trusted zone, observed: recipes and images that other teams' pipelines write."""

import dagster as dg

from clipfood_assets.defs.meta import OWNERS
from clipfood_assets.defs.resources import LakeResource
from clipfood_assets.lake.base import ObjectNotFound
from clipfood_assets.lake.fingerprint import images_digest
from clipfood_assets.lake.layout import RECIPES_KEY, TRUSTED_IMAGES_PREFIX, TRUSTED_ZONE

GROUP = "trusted_zone"

RECIPES = dg.AssetSpec(
    "trusted_recipes",
    group_name=GROUP,
    description=f"Recipe documents, one JSON object per line: {TRUSTED_ZONE}/{RECIPES_KEY}. Versioned by the "
    "object's ETag.",
    metadata={"zone": TRUSTED_ZONE, "zone_key": RECIPES_KEY},
    owners=OWNERS,
    kinds={"s3", "json"},
)
IMAGES = dg.AssetSpec(
    "trusted_images",
    group_name=GROUP,
    description=f"Normalized food photos {TRUSTED_ZONE}/{TRUSTED_IMAGES_PREFIX}…__<recipeId>_<n>.jpg. Versioned by "
    "a digest of every key and ETag.",
    metadata={"zone": TRUSTED_ZONE, "zone_prefix": TRUSTED_IMAGES_PREFIX},
    owners=OWNERS,
    kinds={"s3", "jpeg"},
)


@dg.multi_observable_source_asset(specs=[RECIPES, IMAGES], name="trusted_zone", group_name=GROUP)
def trusted_zone(lake: LakeResource):
    """Data versions from ETags, so the UI shows what changed upstream and what is stale."""
    store = lake.get_lake()
    try:
        info = store.stat(TRUSTED_ZONE, RECIPES_KEY)
        yield dg.ObserveResult(
            asset_key=RECIPES.key,
            data_version=dg.DataVersion(info.etag),
            metadata={"size_bytes": info.size, "uri": dg.MetadataValue.path(store.uri(TRUSTED_ZONE, RECIPES_KEY))},
        )
    except ObjectNotFound:
        yield dg.ObserveResult(asset_key=RECIPES.key, data_version=dg.DataVersion("missing"), metadata={"present": False})
    digest, n, size = images_digest(store)
    yield dg.ObserveResult(
        asset_key=IMAGES.key,
        data_version=dg.DataVersion(digest[:16]),
        metadata={"images": n, "size_bytes": size,
                  "uri": dg.MetadataValue.path(store.uri(TRUSTED_ZONE, TRUSTED_IMAGES_PREFIX))},
    )
