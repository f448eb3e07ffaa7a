"""Jobs for the common actions, so the launchpad has them."""

import dagster as dg

from clipfood_assets.defs.model_zone.partitions import experiment_runs

DATA_ZONE = dg.AssetSelection.groups("data_zone")

prepare_data_job = dg.define_asset_job(
    "prepare_data", selection=DATA_ZONE, description="Trusted zone -> pairs, copied images, augmented pairs."
)
baseline_job = dg.define_asset_job(
    "evaluate_baseline", selection=dg.AssetSelection.assets("baseline_results"), description="Evaluate M0."
)
train_run_job = dg.define_asset_job(
    "train_and_evaluate_run",
    selection=dg.AssetSelection.assets("lora_adapters", "lora_results"),
    partitions_def=experiment_runs,
    description="Train one experiment run's LoRA adapters and evaluate them (M1).",
)
report_job = dg.define_asset_job(
    "rebuild_report", selection=dg.AssetSelection.assets("comparison_report"), description="Rebuild the report."
)
# What a trusted-zone change rebuilds: the data zone and the baseline. LoRA runs are re-trained
# only when asked (they show as stale in the UI); the report follows by declarative automation.
refresh_job = dg.define_asset_job(
    "refresh_from_trusted_zone",
    selection=DATA_ZONE | dg.AssetSelection.assets("preprocessed_images", "baseline_results"),
    description="Rebuild the data zone, update the preprocessed image store and re-evaluate the baseline after "
    "the trusted zone changed.",
    # A step that fails (a storage hiccup) is retried with backoff before the run fails; the sensor
    # then retries failed runs of an unchanged zone.
    op_retry_policy=dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL),
)

JOBS = [prepare_data_job, baseline_job, train_run_job, report_job, refresh_job]
