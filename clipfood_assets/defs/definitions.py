"""Assets, checks, jobs, sensor and resources, assembled once."""


import dagster as dg

from clipfood_assets.defs.data_zone.assets import augmented_training_pairs, fine_tuning_images, positive_pairs
from clipfood_assets.defs.data_zone.checks import DATA_ZONE_CHECKS
from clipfood_assets.defs.exploitation.assets import (
    exploitation_collections,
    exploitation_image_embeddings,
    exploitation_title_embeddings,
    promoted_model,
)
from clipfood_assets.defs.exploitation.checks import EXPLOITATION_CHECKS
from clipfood_assets.defs.exploitation.jobs import EXPLOITATION_JOBS
from clipfood_assets.defs.io_manager import ZoneIOManager
from clipfood_assets.defs.jobs import JOBS
from clipfood_assets.defs.model_zone.assets import baseline_results, lora_adapters, lora_results
from clipfood_assets.defs.model_zone.checks import MODEL_ZONE_CHECKS
from clipfood_assets.defs.model_zone.image_store import preprocessed_images
from clipfood_assets.defs.model_zone.sweeps import submit_sweep, sweep_sensor
from clipfood_assets.defs.report.assets import comparison_report
from clipfood_assets.defs.resources import ComputeResource, ExperimentSettings, lake_resource
from clipfood_assets.defs.trusted_zone.assets import trusted_zone
from clipfood_assets.defs.trusted_zone.sensors import trusted_zone_sensor

ASSETS = [
    trusted_zone,
    positive_pairs,
    fine_tuning_images,
    augmented_training_pairs,
    preprocessed_images,
    baseline_results,
    lora_adapters,
    lora_results,
    comparison_report,
    promoted_model,
    exploitation_image_embeddings,
    exploitation_title_embeddings,
    exploitation_collections,
]

# Runs by default (Dagster's implicit one starts stopped): a run's adapters bring its M1 numbers,
# and new M1 numbers the report, without anyone asking.
AUTOMATION_SENSOR = dg.AutomationConditionSensorDefinition(
    "automation_condition_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
    description="Evaluates the assets' automation conditions: lora_results follows its run's lora_adapters, "
    "comparison_report follows every lora_results and baseline_results.",
)


def build_resources(lake_dir: str | None = None, base_model: str = "", device: str = "auto") -> dict:
    """The resources every process builds alike, for this environment: the lake backend is chosen and
    the base model resolved here, so the UI shows both."""
    lake = lake_resource(lake_dir)
    settings = ExperimentSettings()
    return {
        "lake": lake,
        "io_manager": ZoneIOManager(lake=lake),
        "compute": ComputeResource(device=device),
        "settings": ExperimentSettings(base_model=base_model or settings.resolve_base_model()),
    }


def build_definitions(**resource_overrides) -> dg.Definitions:
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=[*DATA_ZONE_CHECKS, *MODEL_ZONE_CHECKS, *EXPLOITATION_CHECKS],
        jobs=[*JOBS, submit_sweep, *EXPLOITATION_JOBS],
        sensors=[trusted_zone_sensor, sweep_sensor, AUTOMATION_SENSOR],
        resources=build_resources(**resource_overrides),
    )
