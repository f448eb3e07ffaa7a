"""The trusted zone, observed: recipes and images that other teams' pipelines write."""


import dagster as dg

from clipfood_assets.defs.meta import OWNERS
from clipfood_assets.defs.resources import LakeResource
from clipfood_assets.lake.base import ObjectNotFound
from clipfood_assets.lake.fingerprint import images_digest
from clipfood_assets.lake.layout import RECIPES_KEY, TRUSTED_IMAGES_PREFIX, TRUSTED_ZONE

GROUP = "trusted_zone"


@dg.observable_source_asset(
    group_name=GROUP,
    description=f"Recipe documents, one JSON object per line: {TRUSTED_ZONE}/{RECIPES_KEY}. "
    "Versioned by the object's ETag.",
    metadata={"zone": TRUSTED_ZONE, "zone_key": RECIPES_KEY},
    owners=OWNERS,
    kinds={"s3", "json"},
)
def trusted_recipes(lake: LakeResource) -> dg.ObserveResult:
    store = lake.get_lake()
    try:
        info = store.stat(TRUSTED_ZONE, RECIPES_KEY)
    except ObjectNotFound:
        return dg.ObserveResult(data_version=dg.DataVersion("missing"), metadata={"present": False})
    return dg.ObserveResult(
        data_version=dg.DataVersion(info.etag),
        metadata={"present": True, "size_bytes": info.size, "uri": dg.MetadataValue.path(store.uri(TRUSTED_ZONE, RECIPES_KEY))},
    )


@dg.observable_source_asset(
    group_name=GROUP,
    description=f"Normalized food photos {TRUSTED_ZONE}/{TRUSTED_IMAGES_PREFIX}…__<recipeId>_<n>.jpg. "
    "Versioned by a digest of every key and ETag.",
    metadata={"zone": TRUSTED_ZONE, "zone_prefix": TRUSTED_IMAGES_PREFIX},
    owners=OWNERS,
    kinds={"s3", "jpeg"},
)
def trusted_images(lake: LakeResource) -> dg.ObserveResult:
    store = lake.get_lake()
    digest, n, size = images_digest(store)
    return dg.ObserveResult(
        data_version=dg.DataVersion(digest[:16]),
        metadata={"images": n, "size_bytes": size, "uri": dg.MetadataValue.path(store.uri(TRUSTED_ZONE, TRUSTED_IMAGES_PREFIX))},
    )
