"""Launchpad job of the data zone."""

import dagster as dg

from clipfood_assets.defs.meta import DATA_ZONE_WRITER_TAGS, max_runtime

DATA_ZONE = dg.AssetSelection.groups("data_zone")

prepare_data_job = dg.define_asset_job(
    "prepare_data", selection=DATA_ZONE, description="Trusted zone -> pairs, copied images, augmented pairs.",
    tags={**DATA_ZONE_WRITER_TAGS, **max_runtime(hours=12)},
)
