"""Launchpad job of the data zone."""

import dagster as dg

DATA_ZONE = dg.AssetSelection.groups("data_zone")

prepare_data_job = dg.define_asset_job(
    "prepare_data", selection=DATA_ZONE, description="Trusted zone -> pairs, copied images, augmented pairs."
)
