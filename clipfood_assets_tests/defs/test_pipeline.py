"""Every asset materialized in-process on a real lake with the offline base model."""

import dagster as dg
import pytest
import yaml

from clipfood_assets.cli import materialize, write_synthetic_zone
from clipfood_assets.lake import LocalLake
from clipfood_assets.lake.artifacts import read_bundle
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, run_prefix

NOTEBOOK_FILES = {
    "datasets/train_pairs_positive.csv",
    "datasets/test_pairs_positive.csv",
    "datasets/train_pairs_augmented_with_negatives.csv",
    "experiments/baseline/results_baseline.json",
    "experiments/baseline/examples_top5.json",
}
RUN_FILES = {"config.yaml", "run_config.yaml", "training_logs.json", "results_lora.json", "examples_top5.json",
             "adapters/adapter_config.json", "adapters/adapter_model.safetensors"}


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    from clipfood_assets.modeling.base_model import build_base_model

    return build_base_model(tmp_path_factory.mktemp("base") / "model", seed=0, pretrain_steps=0)


def _run_config(tmp_path, name, r):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "lora": {"r": r, "lora_alpha": 2 * r},
        "training": {"epochs": 1, "batch_size": 8, "gradient_accumulation_steps": 2, "learning_rate": 1e-3},
        "evaluation": {"bootstrap_samples": 200},
    }))
    return path


@pytest.mark.slow
def test_every_asset_on_the_local_lake_two_runs_coexist(tmp_path, monkeypatch, base_model):
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    lake_dir = tmp_path / "lake"
    monkeypatch.setenv("CLIPFOOD_LAKE_DIR", str(lake_dir))
    lake = LocalLake(lake_dir)
    write_synthetic_zone(lake, n_recipes=30, seed=5)
    instance = dg.DagsterInstance.ephemeral()

    materialize("r4", _run_config(tmp_path, "r4", 4), base_model=str(base_model), instance=instance)
    materialize("r16", _run_config(tmp_path, "r16", 16), base_model=str(base_model), instance=instance)

    keys = {o.key for o in lake.list(FINE_TUNING_ZONE)}
    assert NOTEBOOK_FILES <= keys
    for run in ("r4", "r16"):
        prefix = run_prefix(run)
        assert {prefix + f for f in RUN_FILES} <= keys
        assert not any(k.startswith(prefix + "checkpoints/") for k in keys)  # cleaned after success
    cfg4 = yaml.safe_load(lake.get_bytes(FINE_TUNING_ZONE, run_prefix("r4") + "config.yaml"))
    cfg16 = yaml.safe_load(lake.get_bytes(FINE_TUNING_ZONE, run_prefix("r16") + "config.yaml"))
    assert (cfg4["lora"]["r"], cfg16["lora"]["r"]) == (4, 16)
    assert cfg4["model"]["name"] == str(base_model)  # M0 and M1 share the base model
    results = read_bundle(lake, FINE_TUNING_ZONE, run_prefix("r4"), "lora_results").read("results_lora.json")
    assert set(results["comparison_to_baseline"]) >= {"text_to_image", "image_to_text", "h1_supported"}
    assert {"report.md", "metric_bars.png"} <= {k.rsplit("/", 1)[-1] for k in keys if k.startswith("experiments/report/")}

    # Blocking checks would have failed their run.
    for run in instance.get_runs():
        assert run.is_success, run.run_id


@pytest.mark.slow
def test_with_minio_endpoint_the_demo_layout_lands_in_the_buckets(tmp_path, monkeypatch, base_model, s3_server, s3_lake):
    import boto3

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    write_synthetic_zone(s3_lake, n_recipes=16, seed=9)
    materialize("s3run", _run_config(tmp_path, "s3run", 4), base_model=str(base_model),
                instance=dg.DagsterInstance.ephemeral())
    s3 = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1")
    assert {b["Name"] for b in s3.list_buckets()["Buckets"]} == {"trusted-zone", "fine-tuning-zone"}
    paginator = s3.get_paginator("list_objects_v2")
    keys = {o["Key"] for page in paginator.paginate(Bucket="fine-tuning-zone") for o in page.get("Contents", [])}
    assert NOTEBOOK_FILES <= keys
    assert {run_prefix("s3run") + f for f in RUN_FILES} <= keys
    assert any(k.startswith("images/") for k in keys) and any(k.startswith("augmented_images/") for k in keys)

    # Every object carries the Content-Type of what it is (MinIO's console and browsers go by it).
    from clipfood_assets.lake.base import object_content_type

    for bucket in ("trusted-zone", "fine-tuning-zone"):
        for page in paginator.paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                got = s3.head_object(Bucket=bucket, Key=obj["Key"])["ContentType"]
                assert got == object_content_type(obj["Key"]), (bucket, obj["Key"], got)

    # The datasets' schemas beside them: frictionless validates a downloaded copy of the folder.
    import frictionless

    folder = tmp_path / "datasets"
    for key in (k for k in keys if k.startswith("datasets/")):
        s3_lake.get_file("fine-tuning-zone", key, folder / key.removeprefix("datasets/"))
    package = frictionless.Package(str(folder / "datapackage.json"))
    assert {r.path for r in package.resources} == {k.removeprefix("datasets/") for k in keys
                                                  if k.startswith("datasets/") and k.endswith(".csv")}
    report = package.validate()
    assert report.valid, report.flatten(["rowNumber", "fieldName", "type", "note"])
