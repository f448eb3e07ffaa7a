"""The trusted zone, observed: its two source assets, the sensor that follows it and the job it launches."""

import dagster as dg


def defs() -> dg.Definitions:
    from clipfood_assets.defs.meta import zone_definitions
    from clipfood_assets.defs.trusted_zone.assets import trusted_zone
    from clipfood_assets.defs.trusted_zone.jobs import refresh_job
    from clipfood_assets.defs.trusted_zone.sensors import trusted_zone_sensor

    return zone_definitions(assets=[trusted_zone], jobs=[refresh_job], sensors=[trusted_zone_sensor],
                            kinds=frozenset({"s3"}))
