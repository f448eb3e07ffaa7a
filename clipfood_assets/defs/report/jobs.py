"""Launchpad job of the report."""

import dagster as dg

report_job = dg.define_asset_job(
    "rebuild_report", selection=dg.AssetSelection.assets("comparison_report"), description="Rebuild the report."
)
