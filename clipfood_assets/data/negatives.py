"""Labelled negatives: an image paired with a caption of a DIFFERENT recipe (label 0)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

NEGATIVE_COLUMNS = ["recipe_id", "image_key", "caption", "label", "negative_recipe_id"]


def _empty(with_source: bool) -> pd.DataFrame:
    columns = NEGATIVE_COLUMNS + (["source_image_key"] if with_source else [])
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "label" else "str") for c in columns})


def sample_negatives(pairs: pd.DataFrame, per_positive: int = 1, seed: int = 42, max_rounds: int = 16) -> pd.DataFrame:
    """For every positive row, ``per_positive`` rows with the same image and another recipe's caption.

    Vectorized: each negative picks a donor recipe at a random non-zero shift from its own recipe
    in the sorted recipe list (so never the same recipe), then one of the donor's captions. Draws
    whose caption is ALSO a caption of the image's recipe (two recipes both titled "Pancakes") or
    that repeat an (image, caption) negative are redrawn, up to ``max_rounds`` times; the few left
    are dropped and counted in ``df.attrs["dropped"]``. Output columns: recipe_id (the image's
    recipe), image_key, caption, label (0), negative_recipe_id (+ source_image_key if present),
    sorted; the result depends only on the set of rows, the seed and per_positive.
    Raises ValueError when fewer than 2 recipes are present.
    """
    if per_positive < 0:
        raise ValueError(f"per_positive must be >= 0, got {per_positive}")
    with_source = "source_image_key" in pairs.columns
    if per_positive == 0 or pairs.empty:
        return _empty(with_source)
    columns = ["recipe_id", "image_key", "caption"] + (["source_image_key"] if with_source else [])
    base = (
        pairs[columns].dropna().astype("str").drop_duplicates()
        .sort_values(columns, kind="stable").reset_index(drop=True)
    )
    recipes = np.sort(base["recipe_id"].unique().astype(object))
    if len(recipes) < 2:
        raise ValueError(f"negatives need captions from at least 2 recipes, got {len(recipes)}")

    pool = _CaptionPool.of(base, recipes)
    anchors = np.repeat(np.arange(len(base)), per_positive)
    anchor_recipe = np.searchsorted(recipes, base["recipe_id"].to_numpy(dtype=object))[anchors].astype(np.int64)
    image_ids = pd.factorize(base["image_key"])[0][anchors].astype(np.int64)
    donor, picked, todo = _draw(pool, anchor_recipe, image_ids, np.random.default_rng(seed), max_rounds)
    keep = np.ones(len(anchors), dtype=bool)
    keep[todo] = False
    if todo.size:
        log.warning("dropped %d negatives without a usable caption after %d rounds", todo.size, max_rounds)

    negatives = base.iloc[anchors[keep]].reset_index(drop=True)
    negatives["caption"] = np.asarray(pool.captions, dtype=object)[picked[keep]]
    negatives["label"] = np.int64(0)
    negatives["negative_recipe_id"] = recipes[donor[keep]]
    negatives = negatives.astype({c: "str" for c in negatives.columns if c != "label"})
    ordered = NEGATIVE_COLUMNS + (["source_image_key"] if with_source else [])
    negatives = negatives[ordered].sort_values(["recipe_id", "image_key", "caption"], kind="stable").reset_index(drop=True)
    negatives.attrs["dropped"] = int(todo.size)
    return negatives


@dataclass(frozen=True)
class _CaptionPool:
    """Distinct (recipe, caption) pairs by recipe code (the position in the sorted recipe list):
    recipe r's captions are ``caption_ids[starts[r]:starts[r] + counts[r]]``, ids into ``captions``."""

    captions: pd.Index
    caption_ids: np.ndarray
    counts: np.ndarray
    starts: np.ndarray
    own_pairs: np.ndarray  # sorted ``recipe * n_captions + caption id`` of every caption a recipe has

    @property
    def n_recipes(self) -> int:
        return len(self.counts)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    @classmethod
    def of(cls, base: pd.DataFrame, recipes: np.ndarray) -> _CaptionPool:
        pool = base[["recipe_id", "caption"]].drop_duplicates().reset_index(drop=True)
        pool_recipe = np.searchsorted(recipes, pool["recipe_id"].to_numpy(dtype=object))
        caption_ids, captions = pd.factorize(pool["caption"])
        order = np.argsort(pool_recipe, kind="stable")
        pool_recipe, caption_ids = pool_recipe[order], caption_ids[order]
        counts = np.bincount(pool_recipe, minlength=len(recipes))
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        own_pairs = np.unique(pool_recipe.astype(np.int64) * len(captions) + caption_ids)
        return cls(captions, caption_ids, counts, starts, own_pairs)


def _draw(
    pool: _CaptionPool, anchor_recipe: np.ndarray, image_ids: np.ndarray, rng: np.random.Generator, max_rounds: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(donor recipe, caption id) of each anchor, and the anchors still without a usable one.

    Each round redraws the anchors whose caption the image's own recipe also has, or that repeat
    an (image, caption) negative: a donor at a random non-zero shift from the anchor's recipe,
    then one of the donor's captions.
    """
    n_recipes, n_captions = pool.n_recipes, pool.n_captions
    donor = np.empty(len(anchor_recipe), dtype=np.int64)
    picked = np.empty(len(anchor_recipe), dtype=np.int64)
    todo = np.arange(len(anchor_recipe))
    for _ in range(max_rounds):
        shift = rng.integers(1, n_recipes, size=len(todo))
        donor[todo] = (anchor_recipe[todo] + shift) % n_recipes
        offset = np.floor(rng.random(len(todo)) * pool.counts[donor[todo]]).astype(np.int64)
        picked[todo] = pool.caption_ids[pool.starts[donor[todo]] + offset]
        shared = np.isin(anchor_recipe * n_captions + picked, pool.own_pairs)
        repeated = pd.Series(image_ids * n_captions + picked).duplicated().to_numpy()
        todo = np.flatnonzero(shared | repeated)
        if todo.size == 0:
            break
    return donor, picked, todo
