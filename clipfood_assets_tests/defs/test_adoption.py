"""A new instance over a built lake records what the lake holds, and only that."""

import json

import dagster as dg
import pytest

from clipfood_assets.definitions import build_definitions
from clipfood_assets.defs.model_zone.sensors import lake_runs_sensor
from clipfood_assets.defs.resources import LakeResource
from clipfood_assets.defs.trusted_zone.sensors import trusted_zone_sensor
from clipfood_assets.lake import LocalLake
from clipfood_assets.lake.artifacts import Bundle, write_bundle
from clipfood_assets.lake.fingerprint import fingerprint_trusted_zone
from clipfood_assets.lake.layout import (
    AUGMENTED_PAIRS_KEY, BASELINE_PREFIX, FINE_TUNING_ZONE, PREPROCESSED_IMAGES_PREFIX, QUARANTINE_KEY, RECIPES_KEY,
    TEST_PAIRS_KEY, TRAIN_PAIRS_KEY, TRUSTED_ZONE, VALIDATION_PAIRS_KEY, run_config_key, run_prefix,
)
from clipfood_assets.lake.provenance import REFRESHED_ARTIFACTS, record_built_from

DATA_ZONE = {"train_pairs_positive", "test_pairs_positive", "validation_pairs_positive", "pairing_quarantine",
             "fine_tuning_images", "augmented_training_pairs"}


@pytest.fixture
def built_lake(tmp_path):
    """What a refresh leaves in a lake: the data zone, the packed store and M0, but no report yet."""
    lake = LocalLake(tmp_path / "lake")
    lake.put_bytes(TRUSTED_ZONE, "images/soup__aaaaaaaaaa_0.jpg", b"jpeg-1")
    lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, json.dumps({"id": "aaaaaaaaaa", "title_text_raw": "Soup"}).encode())
    for key in (TRAIN_PAIRS_KEY, TEST_PAIRS_KEY, VALIDATION_PAIRS_KEY, QUARANTINE_KEY, AUGMENTED_PAIRS_KEY):
        lake.put_bytes(FINE_TUNING_ZONE, key, b"recipe_id,image_key,caption\n")
    lake.put_bytes(FINE_TUNING_ZONE, "images/soup__aaaaaaaaaa_0.jpg", b"jpeg-1")
    lake.put_bytes(FINE_TUNING_ZONE, PREPROCESSED_IMAGES_PREFIX + "0123abcd/index.csv", b"key\n")
    write_bundle(lake, FINE_TUNING_ZONE, BASELINE_PREFIX, "baseline_results", Bundle({"results_baseline.json": {}}))
    for artifact in REFRESHED_ARTIFACTS:
        record_built_from(lake, artifact, fingerprint_trusted_zone(lake).version)
    return lake


def _context(tmp_path, instance, defs):
    return dg.build_sensor_context(instance=instance, definitions=defs,
                                   resources={"lake": LakeResource(local_dir=str(tmp_path / "lake"))})


def _materialized(events) -> set[str]:
    return {e.asset_key.to_user_string() for e in events if isinstance(e, dg.AssetMaterialization)}


def test_a_new_instance_records_the_zone_assets_the_lake_holds_once(tmp_path, built_lake):
    defs = build_definitions(lake_dir=str(tmp_path / "lake"), base_model="/m")
    instance = dg.DagsterInstance.ephemeral()
    result = trusted_zone_sensor(_context(tmp_path, instance, defs))
    assert not result.run_requests and "recorded 8 assets" in result.skip_reason.skip_message
    adopted = [e for e in result.asset_events if isinstance(e, dg.AssetMaterialization)]
    # The report was never written: it is not claimed. Trusted-zone assets are observed, not adopted.
    assert _materialized(adopted) == DATA_ZONE | {"preprocessed_images", "baseline_results"}
    assert all("adopted from the lake" in e.metadata for e in adopted)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    again = trusted_zone_sensor(_context(tmp_path, instance, defs))
    assert _materialized(again.asset_events) == set()


def test_a_half_written_bundle_is_not_adopted(tmp_path, built_lake):
    from clipfood_assets.lake.artifacts import manifest_key

    built_lake.delete(FINE_TUNING_ZONE, manifest_key(BASELINE_PREFIX, "baseline_results"))  # its files stay
    defs = build_definitions(lake_dir=str(tmp_path / "lake"), base_model="/m")
    result = trusted_zone_sensor(_context(tmp_path, dg.DagsterInstance.ephemeral(), defs))
    assert "baseline_results" not in _materialized(result.asset_events)


def test_runs_the_lake_holds_become_partitions_with_their_artifacts(tmp_path, built_lake):
    defs = build_definitions(lake_dir=str(tmp_path / "lake"), base_model="/m")
    write_bundle(built_lake, FINE_TUNING_ZONE, run_prefix("trained"), "lora_adapters", Bundle({"config.yaml": {}}))
    write_bundle(built_lake, FINE_TUNING_ZONE, run_prefix("trained"), "lora_results", Bundle({"results_lora.json": {}}))
    built_lake.put_bytes(FINE_TUNING_ZONE, run_config_key("registered"), b"{}\n")  # registered, never trained
    instance = dg.DagsterInstance.ephemeral()
    result = lake_runs_sensor(_context(tmp_path, instance, defs))
    assert set(result.dynamic_partitions_requests[0].partition_keys) == {"registered", "trained"}
    adopted = {(e.asset_key.to_user_string(), e.partition) for e in result.asset_events}
    assert adopted == {("lora_adapters", "trained"), ("lora_results", "trained")}
    instance.add_dynamic_partitions("experiment_runs", ["registered", "trained"])
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    assert isinstance(lake_runs_sensor(_context(tmp_path, instance, defs)), dg.SkipReason)
