"""Pure data-quality checks: each returns ``(passed, details)`` with JSON-friendly details.

The Dagster layer turns these into asset checks; here they are plain functions on DataFrames.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import pandas as pd

_EXAMPLES = 10


def _examples(values: Iterable[object]) -> list[str]:
    return sorted(str(v) for v in values)[:_EXAMPLES]


def recipe_leakage(train: pd.DataFrame, test: pd.DataFrame) -> tuple[bool, dict]:
    """No recipe (and no image) may appear in both train and test."""
    shared_recipes = set(train["recipe_id"].dropna()) & set(test["recipe_id"].dropna())
    shared_images: set[object] = set()
    if "image_key" in train.columns and "image_key" in test.columns:
        shared_images = set(train["image_key"].dropna()) & set(test["image_key"].dropna())
    details = {
        "train_recipes": int(train["recipe_id"].nunique()),
        "test_recipes": int(test["recipe_id"].nunique()),
        "shared_recipes": len(shared_recipes),
        "shared_image_keys": len(shared_images),
        "examples": _examples(shared_recipes),
    }
    return not shared_recipes and not shared_images, details


def empty_captions(df: pd.DataFrame) -> tuple[bool, dict]:
    """Every caption must be a non-blank string."""
    captions = df["caption"]
    blank = captions.isna() | (captions.astype("str").str.strip().fillna("") == "")
    key_column = "image_key" if "image_key" in df.columns else None
    examples = df.loc[blank, key_column] if key_column else df.index[blank]
    return not blank.any(), {"rows": int(len(df)), "empty": int(blank.sum()), "examples": _examples(examples)}


def label_balance(df: pd.DataFrame, tolerance: float = 0.05, expected_positive_share: float = 0.5) -> tuple[bool, dict]:
    """Share of label-1 rows within ``tolerance`` of the expected share; labels must be 0/1.

    With ``per_positive`` negatives per positive the expected share is 1 / (1 + per_positive).
    """
    labels = df["label"]
    invalid = ~labels.isin([0, 1])
    positives = int((labels == 1).sum())
    share = positives / len(df) if len(df) else 0.0
    details = {
        "rows": int(len(df)),
        "positives": positives,
        "negatives": int((labels == 0).sum()),
        "invalid_labels": int(invalid.sum()),
        "positive_share": round(float(share), 6),
        "expected_positive_share": float(expected_positive_share),
        "tolerance": float(tolerance),
    }
    passed = len(df) > 0 and not invalid.any() and abs(share - expected_positive_share) <= tolerance
    return passed, details


def caption_recipe_index(df: pd.DataFrame) -> dict[str, set[str]]:
    """caption -> recipes that own it, from the positive rows (label 1, or every row without labels)."""
    positives = df[df["label"] == 1] if "label" in df.columns else df
    grouped = positives.dropna(subset=["caption", "recipe_id"]).groupby("caption")["recipe_id"]
    return {caption: set(ids) for caption, ids in grouped}


def negatives_cross_recipe(
    aug_df: pd.DataFrame, caption_to_recipes: Mapping[str, Iterable[str]] | pd.DataFrame
) -> tuple[bool, dict]:
    """A negative's caption must not belong to the recipe of its image, and must be a known caption.

    caption_to_recipes: mapping caption -> recipe ids owning it (see caption_recipe_index), or a
    DataFrame with ``caption, recipe_id`` columns.
    """
    if isinstance(caption_to_recipes, pd.DataFrame):
        owners = caption_to_recipes[["caption", "recipe_id"]].drop_duplicates()
    else:
        owners = pd.DataFrame(
            [(caption, recipe) for caption, recipes in caption_to_recipes.items() for recipe in recipes],
            columns=["caption", "recipe_id"],
        )
    # Ids are text everywhere; cast both sides so a caller's integer ids cannot make the merge fail.
    negatives = aug_df.loc[aug_df["label"] == 0, ["recipe_id", "image_key", "caption"]].astype("str")
    clash = negatives.merge(owners.astype("str"), on=["caption", "recipe_id"], how="inner")
    unknown = ~negatives["caption"].isin(owners["caption"])
    details = {
        "negatives": int(len(negatives)),
        "same_recipe_captions": int(len(clash)),
        "unknown_captions": int(unknown.sum()),
        "examples": _examples(clash["image_key"]),
    }
    return clash.empty and not unknown.any(), details


def missing_keys(df_keys: Iterable[str], existing_keys: Iterable[str]) -> tuple[bool, dict]:
    """Every referenced key (e.g. a CSV's image_key column) must exist in storage."""
    referenced = set(pd.Series(list(df_keys), dtype=object).dropna())
    missing = referenced - set(existing_keys)
    return not missing, {"referenced": len(referenced), "missing": len(missing), "examples": _examples(missing)}
