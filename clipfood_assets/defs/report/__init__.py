"""The comparison report across M0 and every experiment run."""

import dagster as dg


def defs() -> dg.Definitions:
    from clipfood_assets.defs.meta import zone_definitions
    from clipfood_assets.defs.report.assets import comparison_report
    from clipfood_assets.defs.report.jobs import report_job

    return zone_definitions(assets=[comparison_report], jobs=[report_job], kinds=frozenset({"s3"}))
