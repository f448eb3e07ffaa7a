"""The data zone: positive pairs, copied images, augmented pairs, and the checks that guard training."""

import dagster as dg


def defs() -> dg.Definitions:
    from clipfood_assets.defs.data_zone.assets import augmented_training_pairs, fine_tuning_images, positive_pairs
    from clipfood_assets.defs.data_zone.checks import DATA_ZONE_CHECKS
    from clipfood_assets.defs.data_zone.jobs import prepare_data_job
    from clipfood_assets.defs.meta import zone_definitions

    return zone_definitions(assets=[positive_pairs, fine_tuning_images, augmented_training_pairs],
                            asset_checks=DATA_ZONE_CHECKS, jobs=[prepare_data_job], kinds=frozenset({"s3"}))
