"""Model zone: baseline CLIP (M0), LoRA adapters per experiment run, and their evaluation (M1)."""


import tempfile
from pathlib import Path

import dagster as dg
import pandas as pd
import yaml
from pydantic import Field

from clipfood_assets.defs.io_manager import zone_artifact
from clipfood_assets.defs.meta import GPU_POOL, metric_values
from clipfood_assets.defs.model_zone.image_store import opened_images
from clipfood_assets.defs.model_zone.partitions import experiment_runs
from clipfood_assets.defs.resources import ComputeResource, ExperimentSettings, LakeResource
from clipfood_assets.lake.artifacts import Bundle, StoredBundle
from clipfood_assets.lake.provenance import built_from, record_built_from
from clipfood_assets.lake.layout import BASELINE_PREFIX, FINE_TUNING_ZONE, LORA_PREFIX, run_checkpoints_prefix
from clipfood_assets.modeling.config import ExperimentConfig, load_experiment_config

GROUP = "model_zone"
RUN_PREFIX = LORA_PREFIX + "run_{run}/"


def _eval_config(cfg: ExperimentConfig, compute: ComputeResource) -> ExperimentConfig:
    if compute.eval_batch_size:
        return cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"batch_size": compute.eval_batch_size})})
    return cfg


def _headline(results: dict) -> dict:
    eff = results.get("efficiency", {})
    return {
        **metric_values(results),
        "images/s": round(float(eff.get("images_per_s", 0.0)), 1),
        "texts/s": round(float(eff.get("texts_per_s", 0.0)), 1),
        "peak memory (MiB)": round(float(eff.get("peak_memory_bytes", 0)) / 2**20, 1),
        "device": str(eff.get("device", "")),
        "test recipes": int(results.get("n_recipes", 0)),
        "test images": int(results.get("n_images", 0)),
    }


@dg.asset(
    group_name=GROUP,
    deps=["fine_tuning_images", "preprocessed_images"],
    metadata=zone_artifact(BASELINE_PREFIX),
    description="M0: the base CLIP, not fine-tuned, evaluated on the held-out recipes (recipe-level retrieval "
    "both ways, bootstrap CIs): results_baseline.json and examples_top5.json.",
    kinds={"pytorch", "json"},
    code_version="1",
)
def baseline_results(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    compute: ComputeResource,
    settings: ExperimentSettings,
    test_pairs_positive: pd.DataFrame,
):
    from clipfood_assets.modeling.clip import load_clip
    from clipfood_assets.modeling.evaluate import evaluate_retrieval

    cfg = load_experiment_config(settings.experiment_config_path())
    base_model = settings.resolve_base_model()
    device = compute.torch_device()
    zone_lake = lake.get_lake()
    trusted_version = built_from(zone_lake, "positive_pairs")  # of the test pairs read below
    model, processor = load_clip(base_model, device)
    with opened_images(context, zone_lake, processor, test_pairs_positive["image_key"]) as images:
        results, examples = evaluate_retrieval(
            model, processor, test_pairs_positive, images, cfg=_eval_config(cfg, compute), device=device, label="M0",
        )
    results["base_model"] = base_model
    yield dg.Output(
        Bundle({"results_baseline.json": results, "examples_top5.json": examples}),
        metadata={**_headline(results), "base model": base_model},
    )
    if trusted_version is not None:  # stored by now: the lake can say M0 is up to date
        record_built_from(zone_lake, "baseline_results", trusted_version)


class LoraRunConfig(dg.Config):
    overrides_yaml: str = Field(
        default="",
        description="YAML merged over this run's stored config for this launch, e.g. 'training: {epochs: 5}'. "
        "The resolved config is snapshotted to the run's config.yaml.",
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=experiment_runs,
    deps=["fine_tuning_images", "preprocessed_images"],
    pool=GPU_POOL,
    metadata=zone_artifact(RUN_PREFIX),
    description="M1 training for one experiment run: peft LoRA (or the configured peft.method) on both CLIP towers, "
    "contrastive loss over the whole effective batch with same-recipe masking and the labelled negatives, validation "
    "on the validation recipes every epoch (early stopping optional; the best epoch's adapters kept). Writes "
    "config.yaml (the resolved config), adapters/ (safetensors) and training_logs.json; checkpoints in the lake let an "
    "interrupted run resume.",
    kinds={"pytorch", "peft", "safetensors"},
    code_version="2",  # 2: validation every epoch, the best epoch's adapters kept
)
def lora_adapters(
    context: dg.AssetExecutionContext,
    config: LoraRunConfig,
    lake: LakeResource,
    compute: ComputeResource,
    settings: ExperimentSettings,
    augmented_training_pairs: pd.DataFrame,
    validation_pairs_positive: pd.DataFrame,
) -> dg.Output[Bundle]:
    from clipfood_assets.modeling.checkpoint import download_checkpoints, upload_checkpoint
    from clipfood_assets.modeling.clip import load_processor
    from clipfood_assets.modeling.config import config_to_yaml
    from clipfood_assets.modeling.train import format_progress, train_lora

    run_key = context.partition_key
    zone_lake = lake.get_lake()
    cfg = _run_config(run_key, config, zone_lake, compute, settings)
    device = compute.torch_device()
    context.log.info(f"run {run_key} on {compute.describe()}:\n{config_to_yaml(cfg)}")

    keys = [*augmented_training_pairs["image_key"], *validation_pairs_positive["image_key"]]
    with tempfile.TemporaryDirectory(prefix=f"clipfood-run-{run_key}-") as tmp, \
            opened_images(context, zone_lake, load_processor(cfg.model.name), keys) as images:
        work_dir = Path(tmp)
        checkpoints = run_checkpoints_prefix(run_key)
        restored = download_checkpoints(zone_lake, FINE_TUNING_ZONE, checkpoints, work_dir / "checkpoints")
        if restored:
            context.log.info(f"restored {restored} checkpoint files from the lake; resuming")
        result = train_lora(
            cfg.model.name,
            augmented_training_pairs,
            images,
            cfg,
            device=device,
            work_dir=work_dir,
            on_checkpoint=lambda path: upload_checkpoint(
                zone_lake, FINE_TUNING_ZONE, checkpoints, path, cfg.training.keep_checkpoints
            ),
            log=lambda entry: context.log.info(format_progress(entry)) if _worth_logging(entry) else None,
            validation_pairs=validation_pairs_positive,
        )
        logs = result.training_logs
        logs["efficiency"] = _training_efficiency(result)
        bundle = Bundle(
            {
                "config.yaml": yaml.safe_load(config_to_yaml(cfg)),
                "training_logs.json": logs,
                "adapters": result.adapter_dir,
            }
        )
        # The manifest is written by the I/O manager inside this block, while the folder exists.
        yield dg.Output(bundle, metadata=_adapters_metadata(run_key, cfg, result, logs))
    # A finished run needs no checkpoints: a re-run trains again (deterministically) from scratch.
    zone_lake.delete_prefix(FINE_TUNING_ZONE, run_checkpoints_prefix(run_key))


def _run_config(run_key: str, config: LoraRunConfig, zone_lake, compute: ComputeResource,
                settings: ExperimentSettings) -> ExperimentConfig:
    """The run's resolved config: the base config, the run's stored overrides, this launch's, the
    platform's base model, and the compute resource's precision when it is not auto."""
    from clipfood_assets.modeling.runs import parse_launch_overrides, read_run_overrides, resolve_run_config

    cfg = resolve_run_config(
        settings.experiment_config_path(),
        read_run_overrides(zone_lake, run_key),
        parse_launch_overrides(config.overrides_yaml),
        settings.resolve_base_model(),
    )
    if compute.precision != "auto":
        cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"precision": compute.precision})})
    return cfg


def _training_efficiency(result) -> dict:
    """What training_logs.json records of the run's cost (lora_results carries some of it on)."""
    return {
        "training_time_s": result.training_time_s,
        "samples_per_s": result.samples_per_s,
        "peak_memory_bytes": result.peak_memory_bytes,
        "peak_memory_kind": result.peak_memory_kind,
        "trainable_parameters": result.trainable_parameters,
        "total_parameters": result.total_parameters,
        "device": result.device,
    }


def _adapters_metadata(run_key: str, cfg: ExperimentConfig, result, logs: dict) -> dict:
    """lora_adapters' materialization metadata: training figures, validation, the learning curve."""
    return {
        "final loss": round(float(logs["epochs"][-1]["avg_loss"]), 4) if logs.get("epochs") else float("nan"),
        "training time (s)": round(result.training_time_s, 1),
        "pairs/s": round(result.samples_per_s, 1),
        "trainable parameters": int(result.trainable_parameters),
        "total parameters": int(result.total_parameters),
        "peak memory (MiB)": round(result.peak_memory_bytes / 2**20, 1),
        "negatives per pair": round(float(logs.get("negatives_per_pair", 0)), 2),
        "effective batch": int(logs.get("effective_batch_size", 0)),
        "lora r": cfg.lora.r,
        "base model": cfg.model.name,
        "device": result.device,
        **_validation_metadata(logs),
        "learning curve": dg.MetadataValue.md(_learning_curve_md(run_key, logs)),
    }


def _validation_metadata(logs: dict) -> dict:
    best = logs.get("best_validation")
    if not best:
        return {}
    return {"validation t2i R@1 (best)": round(float(best["metrics"]["text_to_image"]["R@1"]), 3),
            "validation i2t R@1 (best)": round(float(best["metrics"]["image_to_text"]["R@1"]), 3),
            "best epoch": int(best["epoch"]), "adapters kept": str(logs.get("final_adapters", "last")),
            "stopped early at epoch": int(logs["stopped_early_at_epoch"] or 0)}


def _worth_logging(entry: dict) -> bool:
    """About twenty progress lines a run, and the last step."""
    return entry["step"] % max(1, entry["total_steps"] // 20) == 0 or entry["step"] == entry["total_steps"]


def _learning_curve_md(run_key: str, logs: dict) -> str:
    from clipfood_assets.reporting import Report, RunArtifacts
    from clipfood_assets.reporting.figures import learning_curves_png
    from clipfood_assets.reporting.plotting import run_colors

    from clipfood_assets.reporting.markdown import FIGURES

    png = learning_curves_png({run_key: RunArtifacts(results={}, training_logs=logs)}, run_colors([run_key]))
    uri = Report(files={"learning_curves.png": png}).figure_data_uri("learning_curves.png")
    return f"![{FIGURES['learning_curves.png']}]({uri})"


@dg.asset(
    group_name=GROUP,
    partitions_def=experiment_runs,
    metadata=zone_artifact(RUN_PREFIX),
    description="M1 evaluation for one experiment run: the base model with the run's adapters (unmerged, as in "
    "validation), on the same "
    "test pairs and protocol as M0, with paired-bootstrap CIs of M1−M0: results_lora.json and examples_top5.json. "
    "Follows its run's lora_adapters by itself (automation); a new trusted zone does not re-evaluate old adapters.",
    kinds={"pytorch", "json"},
    code_version="2",
    # Only a new training of this run re-evaluates it: evaluating old adapters on a new test set could
    # score them on recipes they were trained on (a rebuilt image store changes no test pixel beyond tolerance).
    deps=["preprocessed_images"],
    automation_condition=dg.AutomationCondition.eager().ignore(
        dg.AssetSelection.assets("baseline_results", "test_pairs_positive", "preprocessed_images")
    ),
)
def lora_results(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    compute: ComputeResource,
    lora_adapters: StoredBundle,
    test_pairs_positive: pd.DataFrame,
    baseline_results: StoredBundle,
) -> dg.Output[Bundle]:
    from clipfood_assets.modeling.evaluate import compare_to_baseline, evaluate_retrieval
    from clipfood_assets.modeling.lora import load_adapted_model

    cfg = ExperimentConfig.model_validate(lora_adapters.read("config.yaml"))
    logs = lora_adapters.read("training_logs.json")
    device = compute.torch_device()
    with tempfile.TemporaryDirectory(prefix="clipfood-adapters-") as tmp:
        adapter_dir = lora_adapters.download("adapters", Path(tmp) / "adapters")
        # Unmerged, as validation evaluates them: merging then casting the base to bf16 rounds small updates away.
        model, processor = load_adapted_model(cfg.model.name, adapter_dir, device, merge=False)
    with opened_images(context, lake.get_lake(), processor, test_pairs_positive["image_key"]) as images:
        results, examples = evaluate_retrieval(
            model, processor, test_pairs_positive, images, cfg=_eval_config(cfg, compute), device=device, label="M1",
        )
    results["run_key"] = context.partition_key
    results["base_model"] = cfg.model.name
    results["efficiency"].update({k: v for k, v in logs.get("efficiency", {}).items() if k in (
        "training_time_s", "trainable_parameters", "total_parameters")})
    baseline = baseline_results.read("results_baseline.json")
    comparison = compare_to_baseline(results, baseline, cfg)
    results["comparison_to_baseline"] = comparison
    primary = comparison["text_to_image"]["R@1"]
    run_report = _run_report(context.partition_key, results, examples, logs, cfg, baseline, baseline_results,
                             lake.get_lake())
    return dg.Output(
        Bundle({"results_lora.json": results, "examples_top5.json": examples}),
        metadata={
            **_headline(results),
            **metric_values(baseline, suffix=" (M0)"),
            "t2i R@1 M1−M0": round(float(primary["diff"]), 3),
            "t2i R@1 M1−M0 CI low": round(float(primary["ci"][0]), 3),
            "t2i R@1 M1−M0 CI high": round(float(primary["ci"][1]), 3),
            "H1 supported": bool(comparison["h1_supported"]),
            "report": dg.MetadataValue.md(run_report),
        },
    )


def _run_report(run_key, results, examples, logs, cfg, baseline, baseline_results, zone_lake) -> str:
    """This run against M0 as report.md with its figures inline: metric bars, M1−M0, learning
    curve, efficiency and retrieval examples, on the asset's own page."""
    from clipfood_assets.modeling.config import config_to_yaml
    from clipfood_assets.reporting import RunArtifacts, build_comparison_report

    run = RunArtifacts(results=results, examples=examples, training_logs=logs,
                       config=yaml.safe_load(config_to_yaml(cfg)))
    report = build_comparison_report(baseline, baseline_results.read("examples_top5.json"), {run_key: run},
                                     load_image=lambda key: zone_lake.get_bytes(FINE_TUNING_ZONE, key))
    return report.markdown_with_inline_figures()
