"""Positive (image, caption) pairs and the recipe-level train/test split."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

from clipfood_assets.data.quarantine import QuarantineRecord
from clipfood_assets.data.trusted import RECIPES_KEY

log = logging.getLogger(__name__)


def _usable(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Values as an object array of strings, and a mask of the usable ones (present, not blank)."""
    text = values.astype("str")
    array = text.to_numpy(dtype=object)
    mask = ~pd.isna(array) & (array != "")
    mask &= ~text.str.isspace().to_numpy(dtype=bool, na_value=False)
    return array, mask


def _recipe_quarantine(recipe_id: str, reason: str, detail: str) -> QuarantineRecord:
    return QuarantineRecord(f"{RECIPES_KEY}:id {recipe_id}", reason, detail)


def _unique_recipes(recipes: pd.DataFrame, quarantined: list[QuarantineRecord]) -> pd.DataFrame:
    """Recipes sorted by id, one row per id; ids given with different captions are quarantined."""
    ids, ids_ok = _usable(recipes["recipe_id"])
    captions, captions_ok = _usable(recipes["caption"])
    ok = ids_ok & captions_ok
    recipes = pd.DataFrame({"recipe_id": ids[ok], "caption": captions[ok]})
    if not pd.Index(recipes["recipe_id"]).is_monotonic_increasing:  # parse_recipes output already is
        recipes = recipes.sort_values(["recipe_id", "caption"], kind="stable")
    ids = recipes["recipe_id"].to_numpy(dtype=object)
    if len(ids) > 1 and (ids[1:] == ids[:-1]).any():  # sorted: repeats are adjacent, cheap to test
        recipes = recipes.drop_duplicates()
        repeated = recipes["recipe_id"].duplicated(keep=False)
        for recipe_id in sorted(recipes.loc[repeated, "recipe_id"].unique()):
            quarantined.append(_recipe_quarantine(recipe_id, "conflicting_duplicate_id", "recipe id has several different captions"))
        recipes = recipes[~repeated]
    return recipes.reset_index(drop=True)


def _unique_images(images: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, bool]:
    """(image keys, recipe ids) with both present, each key once (first row kept), and whether keys are sorted."""
    keys, keys_ok = _usable(images["image_key"])
    recipe_ids, recipe_ids_ok = _usable(images["recipe_id"])
    ok = keys_ok & recipe_ids_ok
    keys, recipe_ids = keys[ok], recipe_ids[ok]
    # Object listings come back sorted by key, so the cheap path is the usual one.
    is_sorted = bool(pd.Index(keys).is_monotonic_increasing)
    if is_sorted:
        repeat = np.concatenate(([False], keys[1:] == keys[:-1])) if len(keys) else np.zeros(0, dtype=bool)
    else:
        repeat = pd.Index(keys).duplicated()
    return keys[~repeat], recipe_ids[~repeat], is_sorted


def _order_by_recipe_then_key(recipe_rank: np.ndarray, keys: np.ndarray, keys_sorted: bool) -> np.ndarray:
    """Row order for (recipe, image_key): a stable integer sort when keys are already sorted."""
    if keys_sorted:
        return np.argsort(recipe_rank, kind="stable")
    by_key = np.argsort(keys, kind="stable")
    return by_key[np.argsort(recipe_rank[by_key], kind="stable")]


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
    repeated image keys are dropped. Output columns are exactly ``recipe_id, image_key, caption``,
    sorted by (recipe_id, image_key), so the result does not depend on input order.
    Vectorized: one hash lookup of each image's recipe, then an integer sort.
    """
    quarantined: list[QuarantineRecord] = []
    recipes = _unique_recipes(recipes, quarantined)

    length = recipes["caption"].str.len()
    too_short = (length < min_caption_chars).to_numpy()
    too_long = (length > max_caption_chars).to_numpy()
    for flag, reason, bound in ((too_short, "caption_too_short", f"< {min_caption_chars}"), (too_long, "caption_too_long", f"> {max_caption_chars}")):
        for rec in recipes[flag].itertuples(index=False):
            quarantined.append(_recipe_quarantine(rec.recipe_id, reason, f"caption has {len(rec.caption)} characters ({bound})"))

    keys, image_recipes, keys_sorted = _unique_images(images)
    # Position of each image's recipe in the id-sorted recipe table: the join and the sort key at once.
    rank = pd.Index(recipes["recipe_id"]).get_indexer(image_recipes)
    unknown = rank < 0
    for at in np.flatnonzero(unknown)[np.argsort(keys[unknown], kind="stable")]:
        quarantined.append(QuarantineRecord(keys[at], "unknown_recipe", f"no recipe with id {image_recipes[at]!r}"))
    usable = ~unknown
    usable[usable] = ~(too_short | too_long)[rank[usable]]
    keys, image_recipes, rank = keys[usable], image_recipes[usable], rank[usable]
    order = _order_by_recipe_then_key(rank, keys, keys_sorted)
    pairs = pd.DataFrame(
        {
            "recipe_id": image_recipes[order],
            "image_key": keys[order],
            "caption": recipes["caption"].to_numpy(dtype=object)[rank[order]],
        }
    ).astype("str")
    with_images = np.zeros(len(recipes), dtype=bool)
    with_images[rank] = True
    pairs.attrs["recipes_without_images"] = int((~with_images & ~too_short & ~too_long).sum())
    log.info("built %d positive pairs over %d recipes (%d quarantined)", len(pairs), int(with_images.sum()), len(quarantined))
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


def _sorted_by_recipe_and_key(pairs: pd.DataFrame) -> bool:
    recipe = pairs["recipe_id"].to_numpy(dtype=object)
    key = pairs["image_key"].to_numpy(dtype=object)
    if len(pairs) < 2:
        return True
    try:
        ahead = (recipe[1:] > recipe[:-1]) | ((recipe[1:] == recipe[:-1]) & (key[1:] >= key[:-1]))
    except TypeError:  # NaN or non-string values: let the sort sort it out
        return False
    return bool(ahead.all())


def sort_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pairs sorted by (recipe_id, image_key); a cheap O(n) check skips the sort when already sorted."""
    if _sorted_by_recipe_and_key(pairs):
        return pairs.reset_index(drop=True)
    return pairs.sort_values(["recipe_id", "image_key"], kind="stable").reset_index(drop=True)


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
    pairs = sort_pairs(pairs.dropna(subset=["recipe_id"]))
    recipe = pairs["recipe_id"].to_numpy(dtype=object)
    starts = np.concatenate(([True], recipe[1:] != recipe[:-1])) if len(recipe) else np.zeros(0, dtype=bool)
    recipe_ids = recipe[starts]  # sorted and unique, since pairs are sorted
    ranks = recipe_rank_keys(recipe_ids, seed)
    order = np.argsort(ranks, kind="stable")  # ids are sorted, so equal hashes tie-break by id
    is_test = np.zeros(len(recipe_ids), dtype=bool)
    is_test[order[: n_test_recipes(len(recipe_ids), test_size)]] = True
    in_test = is_test[np.cumsum(starts) - 1] if len(recipe) else np.zeros(0, dtype=bool)
    train, test = pairs[~in_test].reset_index(drop=True), pairs[in_test].reset_index(drop=True)
    log.info("split %d recipes: %d train, %d test", len(recipe_ids), len(recipe_ids) - int(is_test.sum()), int(is_test.sum()))
    return train, test


def exclude_quarantined(rows: pd.DataFrame, records: list[QuarantineRecord]) -> pd.DataFrame:
    """Rows (images or pairs) whose image_key is not the source of any quarantine record (order kept)."""
    bad_keys = {record.source for record in records}
    return rows[~rows["image_key"].isin(bad_keys)].reset_index(drop=True)
