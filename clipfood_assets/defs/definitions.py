"""The domain folders' definitions merged once, with the resources, I/O manager and the automation sensor."""


import dagster as dg

from clipfood_assets.defs import data_zone, exploitation, model_zone, report, trusted_zone
from clipfood_assets.defs.io_manager import ZoneIOManager
from clipfood_assets.defs.resources import ComputeResource, ExperimentSettings, lake_resource

# Each folder registers its own assets, checks, jobs and sensors (its __init__'s defs()).
FOLDERS = (trusted_zone, data_zone, model_zone, report, exploitation)
ZONES = dg.Definitions.merge(*(folder.defs() for folder in FOLDERS))
ASSETS = list(ZONES.assets)

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
    return dg.Definitions.merge(
        ZONES,
        dg.Definitions(sensors=[AUTOMATION_SENSOR], resources=build_resources(**resource_overrides)),
    )
