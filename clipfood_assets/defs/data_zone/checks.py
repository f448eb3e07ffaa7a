"""Checks that protect training: blocking ones stop a bad dataset from reaching the model zone."""


import dagster as dg
import pandas as pd

from clipfood_assets.data import checks
from clipfood_assets.defs.resources import LakeResource
from clipfood_assets.lake.layout import AUGMENTED_IMAGES_PREFIX, FINE_TUNING_ZONE, IMAGES_PREFIX


def _result(passed: bool, details: dict, severity=dg.AssetCheckSeverity.ERROR) -> dg.AssetCheckResult:
    """One metadata entry per number (plottable), the rest (examples, lists) as text."""
    metadata = {}
    for name, value in details.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            metadata[name] = dg.MetadataValue.text(", ".join(map(str, value)) if isinstance(value, (list, tuple, set))
                                                   else str(value))
        else:
            metadata[name] = round(value, 3) if isinstance(value, float) else value
    return dg.AssetCheckResult(passed=bool(passed), severity=severity, metadata=metadata)


@dg.asset_check(
    asset="test_pairs_positive",
    additional_ins={"train_pairs_positive": dg.AssetIn(), "validation_pairs_positive": dg.AssetIn()},
    blocking=True,
    description="No recipe (or image) is in two of train, validation and test.",
)
def no_recipe_leakage(
    test_pairs_positive: pd.DataFrame, train_pairs_positive: pd.DataFrame, validation_pairs_positive: pd.DataFrame
) -> dg.AssetCheckResult:
    passed, details = True, {}
    for (a, name_a), (b, name_b) in (((train_pairs_positive, "train"), (test_pairs_positive, "test")),
                                     ((validation_pairs_positive, "validation"), (test_pairs_positive, "test")),
                                     ((train_pairs_positive, "train"), (validation_pairs_positive, "validation"))):
        ok, found = checks.recipe_leakage(a, b)
        passed &= ok
        details.update({f"{name_a}/{name_b} shared recipes": found["shared_recipes"],
                        f"{name_a}/{name_b} shared images": found["shared_image_keys"]})
        if found["examples"]:
            details[f"{name_a}/{name_b} examples"] = found["examples"]
    details.update({"train recipes": int(train_pairs_positive["recipe_id"].nunique()),
                    "validation recipes": int(validation_pairs_positive["recipe_id"].nunique()),
                    "test recipes": int(test_pairs_positive["recipe_id"].nunique())})
    return _result(passed, details)


@dg.asset_check(asset="train_pairs_positive", blocking=True, description="Every caption has text.")
def train_captions_not_empty(train_pairs_positive: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(*checks.empty_captions(train_pairs_positive))


@dg.asset_check(asset="test_pairs_positive", blocking=True, description="Every caption has text.")
def test_captions_not_empty(test_pairs_positive: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(*checks.empty_captions(test_pairs_positive))


@dg.asset_check(
    asset="fine_tuning_images",
    additional_ins={"train_pairs_positive": dg.AssetIn(), "test_pairs_positive": dg.AssetIn(),
                    "validation_pairs_positive": dg.AssetIn()},
    blocking=True,
    description="Every image key named by the pair CSVs exists in the fine-tuning zone.",
)
def paired_images_exist(
    lake: LakeResource, train_pairs_positive: pd.DataFrame, test_pairs_positive: pd.DataFrame,
    validation_pairs_positive: pd.DataFrame,
) -> dg.AssetCheckResult:
    existing = {o.key for o in lake.get_lake().list(FINE_TUNING_ZONE, IMAGES_PREFIX)}
    keys = pd.concat([train_pairs_positive["image_key"], test_pairs_positive["image_key"],
                      validation_pairs_positive["image_key"]])
    return _result(*checks.missing_keys(keys, existing))


@dg.asset_check(
    asset="augmented_training_pairs",
    blocking=True,
    description="Every image the augmented CSV names exists; augmented image count matches the CSV.",
)
def augmented_images_exist(lake: LakeResource, augmented_training_pairs: pd.DataFrame) -> dg.AssetCheckResult:
    zone_lake = lake.get_lake()
    existing = {o.key for o in zone_lake.list(FINE_TUNING_ZONE, IMAGES_PREFIX)}
    augmented = {o.key for o in zone_lake.list(FINE_TUNING_ZONE, AUGMENTED_IMAGES_PREFIX)}
    passed, details = checks.missing_keys(augmented_training_pairs["image_key"], existing | augmented)
    named = set(augmented_training_pairs["image_key"][augmented_training_pairs["image_key"].str.startswith(AUGMENTED_IMAGES_PREFIX)])
    details.update({"augmented images in zone": len(augmented), "augmented images in CSV": len(named)})
    return _result(passed and len(named) == len(augmented), details)


@dg.asset_check(asset="augmented_training_pairs", blocking=True, description="Every caption has text.")
def augmented_captions_not_empty(augmented_training_pairs: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(*checks.empty_captions(augmented_training_pairs))


@dg.asset_check(asset="augmented_training_pairs", description="Positives and negatives are 1:1 within 5 %.")
def label_balance(augmented_training_pairs: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(*checks.label_balance(augmented_training_pairs, tolerance=0.05), severity=dg.AssetCheckSeverity.WARN)


@dg.asset_check(
    asset="augmented_training_pairs",
    blocking=True,
    description="Every labelled negative pairs an image with a caption of a different recipe.",
)
def negatives_cross_recipe(augmented_training_pairs: pd.DataFrame) -> dg.AssetCheckResult:
    caption_to_recipes = checks.caption_recipe_index(augmented_training_pairs)
    return _result(*checks.negatives_cross_recipe(augmented_training_pairs, caption_to_recipes))


DATA_ZONE_CHECKS = [
    no_recipe_leakage,
    train_captions_not_empty,
    test_captions_not_empty,
    paired_images_exist,
    augmented_images_exist,
    augmented_captions_not_empty,
    label_balance,
    negatives_cross_recipe,
]
