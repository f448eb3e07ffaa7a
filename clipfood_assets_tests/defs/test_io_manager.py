"""The zone I/O manager round-trips every artifact type through a real lake, and pickles nothing."""

import json

import dagster as dg
import pandas as pd
import pytest

from clipfood_assets.defs.io_manager import ZoneIOManager, zone_artifact, zone_object
from clipfood_assets.defs.resources import LakeResource
from clipfood_assets.lake.artifacts import Bundle, IncompleteArtifact, StoredBundle
from clipfood_assets.lake.layout import FINE_TUNING_ZONE

runs = dg.DynamicPartitionsDefinition(name="runs_under_test")


@dg.asset(metadata=zone_object("datasets/table.csv"))
def table() -> pd.DataFrame:
    return pd.DataFrame({"recipe_id": ["a", "b"], "caption": ["Banana, \"French\" Toast", "Crème brûlée"]})


@dg.asset(metadata=zone_object("experiments/x/summary.json"))
def summary() -> dict:
    return {"R@1": 0.25, "nested": {"k": [1, 2]}}


@dg.asset(metadata=zone_object("experiments/x/config.yaml"))
def config_snapshot() -> dict:
    return {"lora": {"r": 8, "target_modules": ["q_proj"]}}


@dg.asset(partitions_def=runs, metadata=zone_artifact("experiments/lora/run_{run}/"))
def run_bundle(context: dg.AssetExecutionContext, table: pd.DataFrame, summary: dict) -> Bundle:
    return Bundle({"results.json": {"run": context.partition_key, "rows": len(table), "R@1": summary["R@1"]},
                   "notes.md": f"# run {context.partition_key}\n"})


@dg.asset(partitions_def=runs, io_manager_key="mem_io")
def consumer(run_bundle: StoredBundle, table: pd.DataFrame, config_snapshot: dict) -> dict:
    return {"results": run_bundle.read("results.json"), "captions": table["caption"].tolist(), "cfg": config_snapshot}


def _resources(lake_resource):
    return {"io_manager": ZoneIOManager(lake=lake_resource), "lake": lake_resource, "mem_io": dg.InMemoryIOManager()}


def test_round_trip_every_type_and_partitions_stay_apart(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    lake_resource = LakeResource(local_dir=str(tmp_path / "lake"))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("runs_under_test", ["r4", "r16"])
    res = dg.materialize([table, summary, config_snapshot], resources=_resources(lake_resource), instance=instance)
    assert res.success
    meta = res.asset_materializations_for_node("table")[0].metadata
    assert meta["uri"].value.endswith("fine-tuning-zone/datasets/table.csv") and meta["size_bytes"].value > 0
    for key in ("r4", "r16"):
        out = dg.materialize([table, summary, config_snapshot, run_bundle, consumer],
                             selection=["run_bundle", "consumer"], partition_key=key,
                             resources=_resources(lake_resource), instance=instance)
        assert out.success
        got = out.output_for_node("consumer")
        assert got["results"] == {"run": key, "rows": 2, "R@1": 0.25}
        assert got["captions"] == ["Banana, \"French\" Toast", "Crème brûlée"]
        assert got["cfg"] == {"lora": {"r": 8, "target_modules": ["q_proj"]}}
    lake = lake_resource.get_lake()
    keys = sorted(o.key for o in lake.list(FINE_TUNING_ZONE))
    assert "experiments/lora/run_r4/results.json" in keys and "experiments/lora/run_r16/results.json" in keys
    assert "experiments/lora/run_r4/_run_bundle.manifest.json" in keys
    # Plain formats only.
    for key in keys:
        data = lake.get_bytes(FINE_TUNING_ZONE, key)
        assert not data.startswith(b"\x80"), f"{key} looks pickled"
    assert lake.get_bytes(FINE_TUNING_ZONE, "experiments/x/config.yaml").startswith(b"lora:")
    # A table's schema lands beside it (lake/tables.py's datapackage.json); a folder without tables has none.
    package = json.loads(lake.get_bytes(FINE_TUNING_ZONE, "datasets/datapackage.json"))
    assert [(r["path"], [f["name"] for f in r["schema"]["fields"]]) for r in package["resources"]] == [
        ("table.csv", ["recipe_id", "caption"])]
    assert "experiments/x/datapackage.json" not in keys


def test_reading_a_half_written_artifact_fails(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    lake_resource = LakeResource(local_dir=str(tmp_path / "lake"))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("runs_under_test", ["half"])
    dg.materialize([table, summary, config_snapshot], resources=_resources(lake_resource), instance=instance)
    # A writer that died before the manifest: files exist, manifest does not.
    lake_resource.get_lake().put_bytes(FINE_TUNING_ZONE, "experiments/lora/run_half/results.json", b"{}")
    with pytest.raises(IncompleteArtifact):
        dg.materialize([table, summary, config_snapshot, run_bundle, consumer], selection=["consumer"],
                       partition_key="half", resources=_resources(lake_resource), instance=instance)


def test_hostile_partition_key_never_becomes_a_path(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    lake_resource = LakeResource(local_dir=str(tmp_path / "lake"))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("runs_under_test", ["../../escape"])
    res = dg.materialize([table, summary, config_snapshot, run_bundle], selection=["run_bundle"],
                         partition_key="../../escape", resources=_resources(lake_resource), instance=instance,
                         raise_on_error=False)
    assert not res.success
    assert not (tmp_path / "escape").exists()
    assert not any("escape" in o.key for o in lake_resource.get_lake().list(FINE_TUNING_ZONE))
