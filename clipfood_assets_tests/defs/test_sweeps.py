"""The sweep sensor: a submitted sweep file registers its points and launches them, once."""

import dagster as dg
import yaml

from clipfood_assets.defs.model_zone.sweeps import SWEEP_TAG, sweep_sensor
from clipfood_assets.defs.resources import ExperimentSettings, LakeResource
from clipfood_assets.lake import LocalLake
from clipfood_assets.lake.artifacts import Bundle, write_bundle
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, run_config_key, run_prefix, sweep_key
from clipfood_assets.modeling.runs import read_run_overrides


def _tick(tmp_path, instance, cursor=None):
    context = dg.build_sensor_context(cursor=cursor, instance=instance, resources={
        "lake": LakeResource(local_dir=str(tmp_path / "lake")), "settings": ExperimentSettings(base_model="/m")})
    return sweep_sensor(context), context.cursor


def test_a_submitted_sweep_launches_each_point_once(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    instance = dg.DagsterInstance.ephemeral()
    nothing, cursor = _tick(tmp_path, instance)
    assert isinstance(nothing, dg.SkipReason)

    spec = {"name": "rk", "base": {"training": {"epochs": 2}}, "grid": {"lora.r": [4, 8, 16]}}
    lake.put_bytes(FINE_TUNING_ZONE, sweep_key("rk"), yaml.safe_dump(spec).encode())
    result, cursor = _tick(tmp_path, instance, cursor)
    keys = [r.partition_key for r in result.run_requests]
    assert keys == ["rk-r4", "rk-r8", "rk-r16"]
    assert all(r.tags[SWEEP_TAG] == "rk" for r in result.run_requests)
    assert list(result.dynamic_partitions_requests[0].partition_keys) == keys
    assert read_run_overrides(lake, "rk-r8") == {"training": {"epochs": 2}, "lora": {"r": 8}}

    unchanged, cursor = _tick(tmp_path, instance, cursor)
    assert isinstance(unchanged, dg.SkipReason)

    # Edited: points trained with the same overrides are not run again; new or changed ones are.
    instance.add_dynamic_partitions("experiment_runs", keys)
    _evaluated(lake, "rk-r4")
    spec["grid"]["lora.r"] = [4, 32]
    lake.put_bytes(FINE_TUNING_ZONE, sweep_key("rk"), yaml.safe_dump(spec).encode())
    edited, cursor = _tick(tmp_path, instance, cursor)
    assert [r.partition_key for r in edited.run_requests] == ["rk-r32"]


def _evaluated(lake, run_key):
    """What lora_results leaves in the lake for a run."""
    write_bundle(lake, FINE_TUNING_ZONE, run_prefix(run_key), "lora_results", Bundle({"results_lora.json": {}}))


def test_a_point_whose_partition_was_deleted_in_the_ui_comes_back_when_the_sweep_is_resubmitted(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    instance = dg.DagsterInstance.ephemeral()
    spec = {"name": "rk", "base": {"training": {"epochs": 2}}, "grid": {"lora.r": [4, 8]}}
    lake.put_bytes(FINE_TUNING_ZONE, sweep_key("rk"), yaml.safe_dump(spec).encode())
    first, cursor = _tick(tmp_path, instance)
    instance.add_dynamic_partitions("experiment_runs", [r.partition_key for r in first.run_requests])
    _evaluated(lake, "rk-r4")  # rk-r4 trained and evaluated; rk-r8 never ran
    # Materializations outlive a deleted partition: they must not make the sensor think a point is done.
    instance.report_runless_asset_event(dg.AssetMaterialization("lora_adapters", partition="rk-r8"))
    for key in ("rk-r4", "rk-r8"):
        instance.delete_dynamic_partition("experiment_runs", key)

    spec["name"] = "rk"  # resubmitted as it was: a new object (new ETag) with the same points
    lake.put_bytes(FINE_TUNING_ZONE, sweep_key("rk"), yaml.safe_dump(spec).encode() + b"\n")
    again, cursor = _tick(tmp_path, instance, cursor)
    assert [r.partition_key for r in again.run_requests] == ["rk-r8"]  # never evaluated: trained again
    # Both partitions are back: rk-r4's results are in the lake and the UI shows them again.
    assert set(again.dynamic_partitions_requests[0].partition_keys) == {"rk-r4", "rk-r8"}


def test_a_bad_sweep_file_is_refused_with_its_reason_and_registers_nothing(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    lake.put_bytes(FINE_TUNING_ZONE, sweep_key("bad"), b"grid: {lora.rank: [4]}\n")
    result, _ = _tick(tmp_path, dg.DagsterInstance.ephemeral())
    assert isinstance(result, dg.SkipReason) and "lora.rank" in result.skip_message and "bad.yaml" in result.skip_message
    assert not lake.exists(FINE_TUNING_ZONE, run_config_key("bad-rank4"))


def test_a_sweep_submitted_from_the_launchpad_is_validated_and_stored(tmp_path):
    from clipfood_assets.definitions import build_definitions

    defs = build_definitions(lake_dir=str(tmp_path / "lake"), base_model="/m")
    job = defs.resolve_job_def("submit_sweep")
    text = "name: ui\ngrid:\n  lora.r: [4, 8]\n"
    result = job.execute_in_process(run_config={"ops": {"store_sweep": {"config": {"sweep_yaml": text}}}})
    assert result.success
    assert LocalLake(tmp_path / "lake").get_bytes(FINE_TUNING_ZONE, sweep_key("ui")).decode() == text
    bad = job.execute_in_process(run_config={"ops": {"store_sweep": {"config": {"sweep_yaml": "grid: {lora.rank: [4]}"}}}},
                                 raise_on_error=False)
    assert not bad.success
    failure = next(e for e in bad.all_events if e.is_step_failure).step_failure_data.user_failure_data
    assert "lora.rank" in failure.description


def test_a_sweep_the_cli_ran_is_never_launched_again_by_the_sensor(tmp_path):
    # `clipfood sweep FILE` (no --submit) keeps its file under ran/ for the report: a `clipfood dev`
    # running at the same time must not train the same points a second time.
    lake = LocalLake(tmp_path / "lake")
    spec = yaml.safe_dump({"name": "local", "grid": {"lora.r": [4, 8]}}).encode()
    lake.put_bytes(FINE_TUNING_ZONE, sweep_key("local", submitted=False), spec)
    result, _ = _tick(tmp_path, dg.DagsterInstance.ephemeral())
    assert isinstance(result, dg.SkipReason) and not lake.exists(FINE_TUNING_ZONE, run_config_key("local-r4"))
    from clipfood_assets.defs.model_zone.sweeps import stored_sweeps

    settings = ExperimentSettings(base_model="/m")
    assert list(stored_sweeps(lake, settings)) == ["local"]  # ...while the report still shows it
