"""Data zone: positive pairs split by recipe, images copied, augmented pairs with labelled negatives."""


import dagster as dg
import pandas as pd
from pydantic import Field

from clipfood_assets.data.augment_config import load_augmentation_config
from clipfood_assets.data.prepare import (
    DegenerateRefresh,
    augment_training_pairs,
    commit_image_copy,
    copy_ledger,
    copy_shard,
    plan_image_copy,
    guard_refresh,
    read_positive_pairs,
    remove_stale_augmented_images,
)
from clipfood_assets.defs.io_manager import zone_object
from clipfood_assets.defs.meta import counts, preview
from clipfood_assets.defs.shards import (
    COMMIT_IN,
    PLAN_OUT,
    SHARD_IN,
    SHARD_OUT,
    current_task,
    emit_tasks,
    plan_id,
    shard_count,
    shard_metadata,
)
from clipfood_assets.defs.resources import ComputeResource, ExperimentSettings, LakeResource
from clipfood_assets.lake.fingerprint import fingerprint_trusted_zone
from clipfood_assets.lake.shards import run_task
from clipfood_assets.lake.provenance import built_from, record_built_from
from clipfood_assets.lake.layout import (
    AUGMENTED_IMAGES_PREFIX,
    AUGMENTED_PAIRS_KEY,
    FINE_TUNING_ZONE,
    IMAGES_PREFIX,
    QUARANTINE_KEY,
    TEST_PAIRS_KEY,
    TRAIN_PAIRS_KEY,
    VALIDATION_PAIRS_KEY,
)

GROUP = "data_zone"
# 2: text-typed CSV schema, one image decoder, copies by source identity, refresh guard.
# 3: a validation split carved from the training recipes.
CODE_VERSION = "3"
# The augmented pairs went on alone: 4: each negative names its recipe (negative_recipe_id).
AUGMENTED_PAIRS_CODE_VERSION = "4"


class PairingConfig(dg.Config):
    test_size: float = Field(default=0.2, gt=0, lt=1, description="Fraction of recipes held out for testing.")
    validation_fraction: float = Field(
        default=0.1, ge=0, lt=1,
        description="Fraction of the training recipes held out for validation (model selection, early stopping); "
        "0: none.",
    )
    seed: int = Field(default=42, description="Seed of the recipe-level split.")
    min_caption_chars: int = 3
    max_caption_chars: int = 200
    max_pair_drop_fraction: float = Field(
        default=0.5, ge=0, le=1,
        description="Refresh guard: stop, before anything is written or deleted, when the pairs would drop by more "
        "than this fraction of those the data zone holds (or to no training or no test pairs at all).",
    )
    accept_degenerate_refresh: bool = Field(
        default=False,
        description="Accept a refresh the guard stops (what `clipfood materialize --force` sets).",
    )


def accept_degenerate_refresh_config() -> dict:
    """Run-config ``ops`` section that lets one refresh through the guard (the CLI's --force)."""
    return {"positive_pairs": {"config": {"accept_degenerate_refresh": True}}}


def _progress(context, what: str):
    """Log about every tenth of the way (progress callbacks fire once per item)."""

    def report(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            context.log.info(f"{what}: {done}/{total}")

    return report


def _table_out(key: str, description: str) -> dg.AssetOut:
    """One CSV table of the data zone (what the pairing multi-asset writes)."""
    return dg.AssetOut(description=description, metadata=zone_object(key), kinds={"pandas", "csv"},
                       code_version=CODE_VERSION)


@dg.multi_asset(
    outs={
        "train_pairs_positive": _table_out(
            TRAIN_PAIRS_KEY,
            "Training pairs (recipe_id, image_key, caption): every trusted image paired with its "
            "recipe's title, 80 % of recipes less the validation recipes.",
        ),
        "test_pairs_positive": _table_out(
            TEST_PAIRS_KEY,
            "Held-out pairs of the other 20 % of recipes (no recipe on both sides). M0 and every M1 "
            "are evaluated on exactly these.",
        ),
        "validation_pairs_positive": _table_out(
            VALIDATION_PAIRS_KEY,
            "Validation pairs: 10 % of the training recipes, held out of training (no augmentation) "
            "for per-epoch validation, early stopping and choosing among runs. Never the test set.",
        ),
        "pairing_quarantine": _table_out(
            QUARANTINE_KEY,
            "Every trusted-zone record that could not be paired, with the reason (malformed JSON, "
            "unknown recipe, corrupt image, unsafe key…). Nothing is dropped silently.",
        ),
    },
    deps=["trusted_recipes", "trusted_images"],
    group_name=GROUP,
)
def positive_pairs(
    context: dg.AssetExecutionContext,
    config: PairingConfig,
    lake: LakeResource,
    compute: ComputeResource,
):
    zone_lake = lake.get_lake()
    # Recorded so `clipfood materialize` can tell whether the data zone is up to date.
    trusted_version = fingerprint_trusted_zone(zone_lake).version
    result = read_positive_pairs(
        zone_lake,
        test_size=config.test_size,
        validation_fraction=config.validation_fraction,
        seed=config.seed,
        min_caption_chars=config.min_caption_chars,
        max_caption_chars=config.max_caption_chars,
        workers=compute.io_workers,
        progress=_progress(context, "images checked"),
    )
    # Before any output is stored: a degenerate refresh must not replace good artifacts.
    try:
        overridden = guard_refresh(
            zone_lake, result, max_drop_fraction=config.max_pair_drop_fraction, accept=config.accept_degenerate_refresh
        )
    except DegenerateRefresh as exc:
        # Retrying cannot help: the trusted zone must change, or the refresh be accepted.
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    if overridden:
        context.log.warning(f"refresh guard overridden (accept_degenerate_refresh): {overridden}")
    by_reason = result.quarantine["reason"].value_counts().to_dict() if len(result.quarantine) else {}
    if len(result.quarantine):
        context.log.warning(f"quarantined {len(result.quarantine)} records: {by_reason}")
    shared = {
        "trusted zone version": trusted_version,
        "recipes read": result.n_recipes_read,
        "images listed": result.n_images_listed,
        "quarantined": len(result.quarantine),
        "folder markers skipped": result.folder_markers,
        "guard overridden": overridden or "no",
    }
    yield dg.Output(result.train, "train_pairs_positive", metadata={**counts(result.train), **shared, "preview": preview(result.train)})
    yield dg.Output(result.test, "test_pairs_positive", metadata={**counts(result.test), **shared, "preview": preview(result.test)})
    yield dg.Output(result.validation, "validation_pairs_positive",
                    metadata={**counts(result.validation), **shared, "preview": preview(result.validation)})
    yield dg.Output(
        result.quarantine,
        "pairing_quarantine",
        metadata={
            "quarantined": len(result.quarantine),
            "by reason": dg.MetadataValue.json({str(k): int(v) for k, v in by_reason.items()}),
            "exact duplicate recipe lines": result.exact_duplicate_recipes,
            "preview": preview(result.quarantine, 10),
        },
    )
    # Every output is stored by now: the lake records which trusted zone the pairs come from.
    record_built_from(zone_lake, "positive_pairs", trusted_version)


def _paired_keys(*tables: pd.DataFrame) -> list[str]:
    return pd.concat([t["image_key"] for t in tables]).tolist()


_PAIR_INS = {name: dg.In(pd.DataFrame) for name in ("train_pairs_positive", "test_pairs_positive",
                                                    "validation_pairs_positive")}


@dg.op(ins=_PAIR_INS, out=PLAN_OUT)
def plan_image_copy_shards(context: dg.OpExecutionContext, lake: LakeResource, train_pairs_positive,
                           test_pairs_positive, validation_pairs_positive):
    """The copies to make, split by key hash into CLIPFOOD_SHARDS shards; one output per shard with work."""
    zone_lake = lake.get_lake()
    plan = plan_image_copy(zone_lake, _paired_keys(train_pairs_positive, test_pairs_positive,
                                                   validation_pairs_positive), n_shards=shard_count())
    yield from emit_tasks(context, copy_ledger(zone_lake), plan)


@dg.op(ins=SHARD_IN, out=SHARD_OUT)
def copy_image_shard(context: dg.OpExecutionContext, lake: LakeResource, compute: ComputeResource) -> None:
    """One shard's server-side copies (its completion record written last)."""
    zone_lake = lake.get_lake()
    ledger = copy_ledger(zone_lake)
    task = current_task(context, ledger)
    record, ran = run_task(ledger, task, lambda t, rows: copy_shard(
        zone_lake, t, rows, workers=compute.io_workers, progress=_progress(context, f"shard {t.shard}: images copied")))
    context.log.info(f"shard {task.shard}/{task.n_shards}: {len(record['copies'])} images "
                     f"{'copied' if ran else 'already copied by an earlier run'}")


@dg.op(ins={**_PAIR_INS, **COMMIT_IN})
def commit_image_copy_shards(context: dg.OpExecutionContext, lake: LakeResource, compute: ComputeResource,
                             train_pairs_positive, test_pairs_positive, validation_pairs_positive) -> dg.Output:
    """Every shard done: the copy record, then the images no longer paired removed."""
    zone_lake = lake.get_lake()
    ledger = copy_ledger(zone_lake)
    plan = ledger.load_plan(plan_id(context))
    stats = commit_image_copy(zone_lake, _paired_keys(train_pairs_positive, test_pairs_positive,
                                                      validation_pairs_positive), plan, workers=compute.io_workers)
    ledger.forget(plan, plan_id(context))
    return dg.Output(None, metadata={
        "images": stats.copied + stats.skipped,
        "copied": stats.copied,
        "skipped (unchanged)": stats.skipped,
        "removed (no longer paired)": stats.deleted,
        **shard_metadata(plan),
        "uri": dg.MetadataValue.path(zone_lake.uri(FINE_TUNING_ZONE, IMAGES_PREFIX)),
    })


@dg.graph_asset(
    group_name=GROUP,
    description=f"The paired images mirrored into {FINE_TUNING_ZONE}/{IMAGES_PREFIX} with server-side copies, in "
    "shards by a hash of the image key (CLIPFOOD_SHARDS; one step per shard with work, in parallel, each retried "
    "alone); unchanged images (the source's ETag and size as recorded at copy time) are skipped; unpaired ones are "
    "removed once every paired image is in place.",
    metadata={"zone": FINE_TUNING_ZONE, "zone_prefix": IMAGES_PREFIX},
    kinds={"jpeg"},
    code_version=CODE_VERSION,
)
def fine_tuning_images(train_pairs_positive, test_pairs_positive, validation_pairs_positive):
    shards = plan_image_copy_shards(train_pairs_positive, test_pairs_positive, validation_pairs_positive)
    return commit_image_copy_shards(train_pairs_positive, test_pairs_positive, validation_pairs_positive,
                                    shards.map(copy_image_shard).collect())


@dg.asset(
    deps=[fine_tuning_images],
    group_name=GROUP,
    description="Training pairs with image and text augmentations and one labelled negative (label 0, a caption "
    f"of another recipe) per positive; variants rendered to {AUGMENTED_IMAGES_PREFIX}. Test data never enters.",
    metadata=zone_object(AUGMENTED_PAIRS_KEY),
    kinds={"pandas", "csv", "pillow"},
    code_version=AUGMENTED_PAIRS_CODE_VERSION,
)
def augmented_training_pairs(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    settings: ExperimentSettings,
    train_pairs_positive: pd.DataFrame,
):
    import os

    zone_lake = lake.get_lake()
    trusted_version = built_from(zone_lake, "positive_pairs")  # of the training pairs given
    cfg = load_augmentation_config(settings.augmentation_config_path())
    pairs = augment_training_pairs(
        zone_lake, train_pairs_positive, cfg, workers=os.cpu_count() or 1,
        progress=_progress(context, "images augmented"),
    )
    labels = pairs["label"].value_counts().to_dict()
    yield dg.Output(
        pairs,
        metadata={
            **counts(pairs),
            "positives": int(labels.get(1, 0)),
            "negatives": int(labels.get(0, 0)),
            "augmented images": int(pairs["image_key"].str.startswith(AUGMENTED_IMAGES_PREFIX).sum()),
            "preview": preview(pairs, 8),
        },
    )
    # The I/O manager stored the new CSV when the output was yielded; only now are the images
    # that the previous CSV named, and the new one does not, removed.
    removed = remove_stale_augmented_images(zone_lake, set(pairs["image_key"]))
    context.log.info(f"removed {removed} augmented images no longer named by the pairs")
    if trusted_version is not None:
        record_built_from(zone_lake, "augmented_training_pairs", trusted_version)
