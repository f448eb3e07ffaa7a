"""Launchpad jobs of the model zone: evaluate M0, train and evaluate one experiment run."""

import dagster as dg

from clipfood_assets.defs.meta import max_runtime
from clipfood_assets.defs.model_zone.partitions import experiment_runs

baseline_job = dg.define_asset_job(
    "evaluate_baseline", selection=dg.AssetSelection.assets("baseline_results"), description="Evaluate M0.",
    tags=max_runtime(hours=6),
)
train_run_job = dg.define_asset_job(
    "train_and_evaluate_run",
    selection=dg.AssetSelection.assets("lora_adapters", "lora_results"),
    partitions_def=experiment_runs,
    description="Train one experiment run's LoRA adapters and evaluate them (M1).",
    # A hung training (a stalled lake, a wedged GPU) fails instead of holding the gpu pool forever.
    tags=max_runtime(hours=48),
    # One process per run: the run worker is the training, so a worker killed (out of memory, a stopped
    # container) takes its training with it, never leaving an orphan step that trains beside the retry.
    executor_def=dg.in_process_executor,
)
