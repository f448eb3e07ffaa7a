"""The automation sensor: Dagster's implicit one starts stopped, this one runs by default."""

import dagster as dg

# A run's adapters bring its M1 numbers, and new M1 numbers the report, without anyone asking.
automation_condition_sensor = dg.AutomationConditionSensorDefinition(
    "automation_condition_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
    description="Evaluates the assets' automation conditions: lora_results follows its run's lora_adapters, "
    "comparison_report follows every lora_results and baseline_results.",
)
