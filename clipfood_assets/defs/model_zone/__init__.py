"""The model zone: the preprocessed image store, M0, LoRA runs (M1) and sweeps of them."""

import dagster as dg


def defs() -> dg.Definitions:
    from clipfood_assets.defs.meta import zone_definitions
    from clipfood_assets.defs.model_zone.assets import baseline_results, lora_adapters, lora_results
    from clipfood_assets.defs.model_zone.checks import MODEL_ZONE_CHECKS
    from clipfood_assets.defs.model_zone.image_store import preprocessed_images
    from clipfood_assets.defs.model_zone.jobs import baseline_job, train_run_job
    from clipfood_assets.defs.model_zone.sensors import lake_runs_sensor
    from clipfood_assets.defs.model_zone.sweeps import submit_sweep, sweep_sensor

    return zone_definitions(assets=[preprocessed_images, baseline_results, lora_adapters, lora_results],
                            asset_checks=MODEL_ZONE_CHECKS, jobs=[baseline_job, train_run_job, submit_sweep],
                            sensors=[sweep_sensor, lake_runs_sensor], kinds=frozenset({"s3"}))
