"""Positive (image, caption) pairs and the recipe-level train/test split."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

from clipfood_assets.data.quarantine import QuarantineRecord
from clipfood_assets.data.trusted import RECIPES_KEY

log = logging.getLogger(__name__)

PAIR_COLUMNS = ["recipe_id", "image_key", "caption"]


def _clean_text_column(values: pd.Series) -> pd.Series:
    """Strings with NaN for missing/blank values (so dropna removes them)."""
    text = values.astype("str")
    return text.where(text.str.strip().str.len() > 0)


def _recipe_quarantine(recipe_id: str, reason: str, detail: str) -> QuarantineRecord:
    return QuarantineRecord(f"{RECIPES_KEY}:id {recipe_id}", reason, detail)


def build_positive_pairs(
    recipes: pd.DataFrame,
    images: pd.DataFrame,
    min_caption_chars: int = 3,
    max_caption_chars: int = 200,
) -> tuple[pd.DataFrame, list[QuarantineRecord]]:
    """Join images to their recipe's caption: one positive pair per image.

    recipes: ``recipe_id, caption`` (e.g. from parse_recipes); images: ``image_key, recipe_id``
    (from parse_image_keys). Images naming no known recipe are quarantined (``unknown_recipe``),
    recipes whose caption is outside [min_caption_chars, max_caption_chars] are quarantined once
    (``caption_too_short`` / ``caption_too_long``) with their images left out; a recipe id given
    twice with different captions is quarantined (``conflicting_duplicate_id``). NaNs, blanks and
    duplicate rows are dropped. Output columns are exactly ``recipe_id, image_key, caption``,
    sorted by (recipe_id, image_key), so the result does not depend on input order.
    """
    quarantined: list[QuarantineRecord] = []

    recipes = pd.DataFrame(
        {"recipe_id": _clean_text_column(recipes["recipe_id"]), "caption": _clean_text_column(recipes["caption"])}
    ).dropna()
    recipes = recipes.drop_duplicates()
    # Defensive: parse_recipes already resolves this, but a hand-made frame might not.
    repeated = recipes["recipe_id"].duplicated(keep=False)
    for recipe_id in sorted(recipes.loc[repeated, "recipe_id"].unique()):
        quarantined.append(_recipe_quarantine(recipe_id, "conflicting_duplicate_id", "recipe id has several different captions"))
    recipes = recipes[~repeated]

    length = recipes["caption"].str.len()
    too_short = length < min_caption_chars
    too_long = length > max_caption_chars
    for flag, reason, bound in ((too_short, "caption_too_short", f"< {min_caption_chars}"), (too_long, "caption_too_long", f"> {max_caption_chars}")):
        for rec in recipes[flag].sort_values("recipe_id").itertuples(index=False):
            quarantined.append(_recipe_quarantine(rec.recipe_id, reason, f"caption has {len(rec.caption)} characters ({bound})"))
    usable = recipes[~(too_short | too_long)]

    images = pd.DataFrame(
        {"image_key": _clean_text_column(images["image_key"]), "recipe_id": _clean_text_column(images["recipe_id"])}
    ).dropna().drop_duplicates()
    known = images["recipe_id"].isin(recipes["recipe_id"])  # recipes before caption bounds
    for rec in images[~known].sort_values("image_key").itertuples(index=False):
        quarantined.append(QuarantineRecord(rec.image_key, "unknown_recipe", f"no recipe with id {rec.recipe_id!r}"))

    pairs = images[known].merge(usable, on="recipe_id", how="inner", validate="many_to_one")
    pairs = (
        pairs[PAIR_COLUMNS]
        .drop_duplicates(["recipe_id", "image_key"])
        .sort_values(["recipe_id", "image_key"], kind="stable")
        .reset_index(drop=True)
    )
    pairs.attrs["recipes_without_images"] = int((~usable["recipe_id"].isin(pairs["recipe_id"])).sum())
    log.info("built %d positive pairs over %d recipes (%d quarantined)", len(pairs), pairs["recipe_id"].nunique(), len(quarantined))
    return pairs, quarantined


def recipe_rank_keys(recipe_ids: np.ndarray | pd.Series | list[str], seed: int) -> np.ndarray:
    """A seeded, stable 64-bit hash of each recipe id (blake2b of ``f"{seed}:{recipe_id}"``)."""
    digests = b"".join(
        hashlib.blake2b(f"{seed}:{recipe_id}".encode("utf-8"), digest_size=8).digest() for recipe_id in recipe_ids
    )
    return np.frombuffer(digests, dtype=">u8").astype(np.uint64)


def n_test_recipes(n_recipes: int, test_size: float) -> int:
    """round(test_size * n), but at least 1 and at most n-1 when there are two or more recipes."""
    if n_recipes < 2:
        return 0
    return min(max(round(test_size * n_recipes), 1), n_recipes - 1)


def split_by_recipe(
    pairs: pd.DataFrame, test_size: float = 0.2, seed: int = 42
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split pairs into (train, test) by recipe: no recipe has rows on both sides.

    Exactly ``n_test_recipes(n, test_size)`` recipes go to test: those with the smallest seeded
    hash. Each recipe's rank depends only on its own id (not on a shuffle of the whole list),
    so the split is independent of row order and adding one recipe moves at most one existing
    recipe across the boundary: yesterday's test recipes do not leak into today's training.
    Both outputs are sorted by (recipe_id, image_key).
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    recipe_ids = np.sort(np.asarray(pairs["recipe_id"].dropna().astype("str").unique(), dtype=object))
    ranks = recipe_rank_keys(recipe_ids, seed)
    order = np.argsort(ranks, kind="stable")  # ids are sorted, so equal hashes tie-break by id
    test_ids = recipe_ids[order[: n_test_recipes(len(recipe_ids), test_size)]]
    in_test = pairs["recipe_id"].isin(test_ids)
    sort_cols = [c for c in ("recipe_id", "image_key") if c in pairs.columns]

    def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.sort_values(sort_cols, kind="stable").reset_index(drop=True)

    train, test = _tidy(pairs[~in_test]), _tidy(pairs[in_test])
    log.info("split %d recipes: %d train, %d test", len(recipe_ids), len(recipe_ids) - len(test_ids), len(test_ids))
    return train, test


def exclude_quarantined(pairs: pd.DataFrame, records: list[QuarantineRecord]) -> pd.DataFrame:
    """Pairs whose image_key is not the source of any quarantine record (order kept)."""
    bad_keys = {record.source for record in records}
    return pairs[~pairs["image_key"].isin(bad_keys)].reset_index(drop=True)
