"""The sharded data plane in Dagster: a real run under the multiprocess executor runs each shard with work as
its own step, in its own process; an unchanged zone runs no shard step, a changed photo one."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from clipfood_assets.definitions import build_definitions
from clipfood_assets.lake import LocalLake
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, IMAGES_PREFIX, RECIPES_KEY, TRUSTED_ZONE
from clipfood_assets.lake.shards import shard_of

from ..data import factories as f

N_SHARDS = 3
COPY = dg.AssetSelection.groups("data_zone") - dg.AssetSelection.assets("augmented_training_pairs")


def copy_job() -> dg.JobDefinition:
    """The pairs and the sharded copy under the multiprocess executor (the lake from CLIPFOOD_LAKE_DIR)."""
    job = dg.define_asset_job("copy_in_shards", selection=COPY, executor_def=dg.multiprocess_executor)
    defs = dg.Definitions.merge(build_definitions(base_model="not-used"), dg.Definitions(jobs=[job]))
    return defs.resolve_job_def("copy_in_shards")


@pytest.fixture
def zone(tmp_path, monkeypatch):
    lake_dir = tmp_path / "lake"
    monkeypatch.setenv("CLIPFOOD_LAKE_DIR", str(lake_dir))
    monkeypatch.setenv("CLIPFOOD_SHARDS", str(N_SHARDS))
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    lake = LocalLake(lake_dir)
    recipes = []
    for i in range(12):
        rid = f.synthetic_id(i)
        recipes.append({"id": rid, "title_text_raw": f"Dish number {i} with rice"})
        for n in range(2):
            lake.put_bytes(TRUSTED_ZONE, f"images/dish__{rid}_{n}.jpg", f.image_bytes(fmt="JPEG", seed=i * 2 + n))
    lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, "".join(json.dumps(r) + "\n" for r in recipes).encode())
    return lake


def _shard_steps(result) -> dict[str, int]:
    return {e.step_key: e.pid for e in result.all_events
            if e.event_type_value == "STEP_START" and e.step_key.startswith("fine_tuning_images.copy_image_shard")}


def test_shard_steps_run_in_separate_processes_and_only_when_their_images_changed(zone):
    with dg.instance_for_test() as instance:
        result = dg.execute_job(dg.reconstructable(copy_job), instance=instance)
        assert result.success
        steps = _shard_steps(result)
        keys = sorted(o.key for o in zone.list(TRUSTED_ZONE, "images/"))
        assert len(steps) == len({shard_of(k, N_SHARDS) for k in keys}) == N_SHARDS
        assert len(set(steps.values())) == N_SHARDS  # one process per shard step
        plan_pid = next(e.pid for e in result.all_events if e.event_type_value == "STEP_START"
                        and e.step_key == "fine_tuning_images.plan_image_copy_shards")
        assert plan_pid not in steps.values()
        copied = {o.key for o in zone.list(FINE_TUNING_ZONE, IMAGES_PREFIX)}
        assert copied == set(keys)
        meta = instance.get_latest_materialization_event(dg.AssetKey("fine_tuning_images")).asset_materialization.metadata
        assert meta["copied"].value == len(keys) and meta["shards"].value == N_SHARDS

        again = dg.execute_job(dg.reconstructable(copy_job), instance=instance)
        assert again.success and _shard_steps(again) == {}  # nothing changed: no shard step at all
        meta = instance.get_latest_materialization_event(dg.AssetKey("fine_tuning_images")).asset_materialization.metadata
        assert meta["skipped (unchanged)"].value == len(keys)

        zone.put_bytes(TRUSTED_ZONE, keys[5], f.image_bytes(fmt="JPEG", seed=99))
        changed = dg.execute_job(dg.reconstructable(copy_job), instance=instance)
        assert changed.success
        assert [k.split("[")[1][:10] for k in _shard_steps(changed)] == [f"shard_{shard_of(keys[5], N_SHARDS):04d}"]
        assert zone.get_bytes(FINE_TUNING_ZONE, keys[5]) == zone.get_bytes(TRUSTED_ZONE, keys[5])
