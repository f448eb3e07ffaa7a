"""The definitions load, and the catalogue reads like the original notebooks' flow."""

import dagster as dg

from clipfood_assets.definitions import build_definitions

defs = build_definitions()

EXPECTED_ASSETS = {
    "trusted_recipes": "trusted_zone",
    "trusted_images": "trusted_zone",
    "train_pairs_positive": "data_zone",
    "test_pairs_positive": "data_zone",
    "validation_pairs_positive": "data_zone",
    "pairing_quarantine": "data_zone",
    "fine_tuning_images": "data_zone",
    "augmented_training_pairs": "data_zone",
    "preprocessed_images": "model_zone",
    "baseline_results": "model_zone",
    "lora_adapters": "model_zone",
    "lora_results": "model_zone",
    "comparison_report": "report",
    "promoted_model": "exploitation_zone",
    "exploitation_image_embeddings": "exploitation_zone",
    "exploitation_title_embeddings": "exploitation_zone",
    "exploitation_collections": "exploitation_zone",
}


def _specs():
    return {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}


def test_asset_keys_groups_and_catalogue_fields():
    specs = _specs()
    assert {k: s.group_name for k, s in specs.items()} == EXPECTED_ASSETS
    for key, spec in specs.items():
        assert spec.description and len(spec.description) > 30, key
        assert spec.owners == ["team:ml-platform"], key
        assert spec.kinds, key


def test_lineage_follows_the_seed():
    specs = _specs()
    deps = {k: {d.asset_key.to_user_string() for d in s.deps} for k, s in specs.items()}
    assert deps["train_pairs_positive"] == {"trusted_recipes", "trusted_images"}
    assert deps["fine_tuning_images"] == {"train_pairs_positive", "test_pairs_positive", "validation_pairs_positive"}
    assert deps["augmented_training_pairs"] == {"fine_tuning_images", "train_pairs_positive"}
    assert deps["preprocessed_images"] == {"fine_tuning_images", "augmented_training_pairs"}
    assert deps["baseline_results"] == {"fine_tuning_images", "preprocessed_images", "test_pairs_positive"}
    assert deps["lora_adapters"] == {"fine_tuning_images", "preprocessed_images", "augmented_training_pairs",
                                     "validation_pairs_positive"}
    assert deps["lora_results"] == {"lora_adapters", "preprocessed_images", "test_pairs_positive", "baseline_results"}
    assert deps["comparison_report"] == {"lora_results", "baseline_results"}


def test_runs_are_partitions_and_training_uses_the_gpu_pool():
    specs = _specs()
    for key in ("lora_adapters", "lora_results"):
        assert isinstance(specs[key].partitions_def, dg.DynamicPartitionsDefinition)
        assert specs[key].partitions_def.name == "experiment_runs"
    assert specs["baseline_results"].partitions_def is None
    lora = defs.resolve_assets_def("lora_adapters")
    assert lora.op.pool == "gpu"


def test_jobs_checks_and_sensor_are_registered():
    for name in ("prepare_data", "evaluate_baseline", "train_and_evaluate_run", "rebuild_report",
                 "refresh_from_trusted_zone"):
        defs.resolve_job_def(name)
    check_keys = {k.name for k in defs.resolve_asset_graph().asset_check_keys}
    assert {"no_recipe_leakage", "paired_images_exist", "negatives_cross_recipe", "label_balance",
            "augmented_images_exist", "lora_beats_baseline", "baseline_metrics_in_range"} <= check_keys
    assert defs.resolve_sensor_def("trusted_zone_sensor")


def test_dagster_validates_the_workspace():
    import subprocess
    import sys

    from clipfood_assets_tests import REPO_ROOT

    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(REPO_ROOT / "workspace.yaml")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
