"""Trusted-zone observations: either asset can be observed alone, and observing an unchanged zone
leaves the data zone fresh (it was built from the versions the CLI recorded), a changed one stale."""

import dagster as dg
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from clipfood_assets.cli import write_synthetic_zone
from clipfood_assets.definitions import build_definitions
from clipfood_assets.defs.trusted_zone.sensors import record_observations
from clipfood_assets.lake import LocalLake
from clipfood_assets.lake.layout import RECIPES_KEY, TRUSTED_ZONE

TRUSTED = [dg.AssetKey("trusted_recipes"), dg.AssetKey("trusted_images")]


def _observe(defs, instance, keys):
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=set(keys))
    result = job.execute_in_process(instance=instance)
    assert result.success
    return {e.asset_key: e.asset_observation_data.asset_observation.data_version
            for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"}


def _status(instance, key: str) -> StaleStatus:
    return get_stale_status_resolver(instance, list(build_definitions().assets)).get_status(dg.AssetKey(key))


@pytest.fixture
def built(tmp_path):
    """A data zone prepared the way `clipfood materialize` prepares it: observed first, then built."""
    lake = LocalLake(tmp_path / "lake")
    write_synthetic_zone(lake, n_recipes=10, seed=5)
    defs = build_definitions(lake_dir=str(tmp_path / "lake"))
    instance = dg.DagsterInstance.ephemeral()
    record_observations(instance, lake)
    assert defs.resolve_job_def("prepare_data").execute_in_process(instance=instance).success
    return lake, defs, instance


@pytest.mark.parametrize("keys", [[TRUSTED[0]], [TRUSTED[1]], TRUSTED], ids=["recipes", "images", "both"])
def test_each_trusted_zone_asset_can_be_observed_alone(built, keys):
    _, defs, instance = built
    observed = _observe(defs, instance, keys)
    assert set(observed) == set(keys)


def test_observing_an_unchanged_zone_leaves_the_data_zone_fresh_and_a_change_makes_it_stale(built):
    lake, defs, instance = built
    _observe(defs, instance, TRUSTED)
    for asset in ("train_pairs_positive", "test_pairs_positive", "augmented_training_pairs"):
        assert _status(instance, asset) == StaleStatus.FRESH, asset

    lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, lake.get_bytes(TRUSTED_ZONE, RECIPES_KEY) + b"\n")
    _observe(defs, instance, [TRUSTED[0]])
    assert _status(instance, "train_pairs_positive") == StaleStatus.STALE
