"""Declarative automation, evaluated the way the running automation sensor evaluates it: a run's
adapters bring its M1 numbers, new M1 numbers bring the report, and nothing else is requested."""

import dagster as dg
import pytest

from clipfood_assets.definitions import build_definitions
from clipfood_assets.defs.automation import automation_condition_sensor
from clipfood_assets.defs.model_zone.partitions import experiment_runs

DATA_ZONE = ("train_pairs_positive", "test_pairs_positive", "pairing_quarantine", "fine_tuning_images",
             "augmented_training_pairs")


def _materialized(instance, asset: str, partition: str | None = None) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=partition))


def _requested(result) -> set[tuple[str, str | None]]:
    requested = set()
    for key in ("lora_results", "comparison_report", "baseline_results", "lora_adapters"):
        for partition in result.get_requested_partitions(dg.AssetKey(key)) if result.get_num_requested(
                dg.AssetKey(key)) else []:
            requested.add((key, partition))
    return requested


@pytest.fixture
def world():
    """The state `make demo` leaves: data zone, M0, run `demo` and the report, all built."""
    defs = build_definitions()
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(experiment_runs.name, ["demo"])
    for asset in (*DATA_ZONE, "baseline_results"):
        _materialized(instance, asset)
    _materialized(instance, "lora_adapters", "demo")
    _materialized(instance, "lora_results", "demo")
    _materialized(instance, "comparison_report")
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0  # a settled instance requests nothing
    return defs, instance, first.cursor


def test_the_automation_sensor_runs_by_default_over_every_asset():
    assert automation_condition_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    defs = build_definitions()
    assert automation_condition_sensor in defs.sensors


def test_a_new_runs_adapters_bring_its_results_then_the_report(world):
    defs, instance, cursor = world
    instance.add_dynamic_partitions(experiment_runs.name, ["ui-run", "never-trained"])
    added = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    assert added.total_requested == 0  # a run that is not trained yet asks for nothing
    _materialized(instance, "lora_adapters", "ui-run")
    after_training = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=added.cursor)
    assert _requested(after_training) == {("lora_results", "ui-run")}

    _materialized(instance, "lora_results", "ui-run")
    after_eval = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after_training.cursor)
    # The untrained run ("never-trained") does not hold the report back.
    assert _requested(after_eval) == {("comparison_report", None)}


def test_a_new_baseline_rebuilds_the_report_but_does_not_re_evaluate_old_adapters(world):
    defs, instance, cursor = world
    for asset in ("test_pairs_positive", "baseline_results"):
        _materialized(instance, asset)
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    assert _requested(result) == {("comparison_report", None)}
