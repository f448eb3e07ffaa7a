"""What a trusted-zone change rebuilds (the job its sensor launches)."""

import dagster as dg

from clipfood_assets.defs.data_zone.jobs import DATA_ZONE
from clipfood_assets.defs.meta import DATA_ZONE_WRITER_TAGS, max_runtime

# The data zone and the baseline. LoRA runs are re-trained only when asked (they show as stale in
# the UI); the report follows by declarative automation.
refresh_job = dg.define_asset_job(
    "refresh_from_trusted_zone",
    selection=DATA_ZONE | dg.AssetSelection.assets("preprocessed_images", "baseline_results"),
    description="Rebuild the data zone, update the preprocessed image store and re-evaluate the baseline after "
    "the trusted zone changed.",
    # A step that fails (a storage hiccup) is retried with backoff before the run fails; the sensor
    # then retries failed runs of an unchanged zone.
    tags={**DATA_ZONE_WRITER_TAGS, **max_runtime(hours=12)},
    op_retry_policy=dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL),
)
