"""Augmented training data: plan, render, and assemble pairs with labelled negatives.

Three steps so the expensive one (rendering images) can run in parallel and be retried:

1. ``plan_augmentations``: pure and cheap. One row per augmented variant with its own seed,
   derived from the master seed and the source key (never from row order or worker).
2. ``render_all``: reads each source image once, renders its variants, writes JPEGs.
3. ``build_augmented_pairs``: originals + augmented positives + labelled negatives.

Only training pairs ever enter here; ``build_augmented_pairs`` refuses plan rows whose source
is not one of the training pairs it is given, so test images cannot leak in.
"""

from __future__ import annotations

import hashlib
import logging
from io import BytesIO
from pathlib import PurePosixPath
from typing import Callable

import numpy as np
import pandas as pd

from clipfood_assets.data.augment_config import AugmentationConfig
from clipfood_assets.data.augment_image import augment_image
from clipfood_assets.data.augment_text import augment_caption
from clipfood_assets.data.negatives import sample_negatives
from clipfood_assets.data.parallel import bounded_map
from clipfood_assets.data.decode import decode_rgb

log = logging.getLogger(__name__)

AUGMENTED_PREFIX = "augmented_images/"
JPEG_QUALITY = 90
PLAN_COLUMNS = ["kind", "variant", "source_image_key", "image_key", "recipe_id", "caption", "text_ops", "seed"]
# negative_recipe_id: the recipe whose caption a negative (label 0) carries, as sample_negatives
# drew it, so training never has to guess it from the caption; "" on positives.
AUGMENTED_COLUMNS = ["recipe_id", "image_key", "caption", "label", "augmentation", "source_image_key", "negative_recipe_id"]
PLAN_CONFIG_ATTR = "augmentation_config"
_TEXT_STREAM = 1  # text draws come from a stream distinct from the image's (seed, not seed+1)


def item_seed(master_seed: int, kind: str, source_key: str, variant: int) -> int:
    """A 63-bit seed for one augmented item, from the master seed and the item's identity."""
    digest = hashlib.blake2b(f"{master_seed}:{kind}:{source_key}:{variant}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # fits an int64 column


def _canonical_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    return (
        pairs[["recipe_id", "image_key", "caption"]].dropna().astype("str")
        .drop_duplicates(["recipe_id", "image_key"])
        .sort_values(["recipe_id", "image_key"], kind="stable").reset_index(drop=True)
    )


def augmented_keys(source_keys: pd.Series, variant: int) -> pd.Series:
    """``augmented_images/<stem>_aug<k>.jpg``; stems shared by two sources get a short hash."""
    stems = source_keys.map(lambda key: PurePosixPath(key).stem)
    clash = stems.duplicated(keep=False)
    tags = source_keys[clash].map(lambda key: "_" + hashlib.blake2b(key.encode("utf-8"), digest_size=4).hexdigest())
    stems = stems.where(~clash, stems + tags.reindex(stems.index).fillna(""))
    return AUGMENTED_PREFIX + stems + f"_aug{variant}.jpg"


def plan_augmentations(train_pairs: pd.DataFrame, cfg: AugmentationConfig) -> pd.DataFrame:
    """Deterministic plan of augmented variants for the training pairs.

    kind "image": an augmented copy of the image (``augmentations_per_image`` per pair) written
    to ``augmented_images/<stem>_aug<k>.jpg``, with an augmented caption when text augmentation
    is on. kind "text": the original image with an augmented caption
    (``augmentations_per_caption`` per pair; variants identical to the caption are skipped).
    Columns: kind, variant, source_image_key, image_key, recipe_id, caption, text_ops, seed.
    """
    pairs = _canonical_pairs(train_pairs)
    image_cfg, text_cfg = cfg.image_augmentation, cfg.text_augmentation
    frames = []
    image_variants = image_cfg.augmentations_per_image if image_cfg.enabled else 0
    text_variants = text_cfg.augmentations_per_caption if text_cfg.enabled else 0
    for kind, count in (("image", image_variants), ("text", text_variants)):
        for variant in range(1, count + 1):
            frame = pd.DataFrame({"kind": kind, "variant": variant, "source_image_key": pairs["image_key"]})
            frame["image_key"] = augmented_keys(pairs["image_key"], variant) if kind == "image" else pairs["image_key"]
            frame["recipe_id"] = pairs["recipe_id"]
            frame["seed"] = [item_seed(cfg.seed, kind, key, variant) for key in pairs["image_key"]]
            captions, ops = [], []
            for caption, seed in zip(pairs["caption"], frame["seed"]):
                if text_cfg.enabled:
                    caption, applied = augment_caption(caption, cfg, np.random.default_rng([seed, _TEXT_STREAM]))
                else:
                    applied = []
                captions.append(caption)
                ops.append("+".join(applied))
            frame["caption"], frame["text_ops"] = captions, ops
            if kind == "text":
                frame = frame[frame["caption"] != pairs["caption"]]
            frames.append(frame)
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c in ("variant", "seed") else "str") for c in PLAN_COLUMNS})
    plan = pd.concat(frames, ignore_index=True)[PLAN_COLUMNS]
    plan = plan.drop_duplicates(["image_key", "caption"]).astype({"variant": "int64", "seed": "int64"})
    plan = plan.sort_values(["kind", "source_image_key", "variant"], kind="stable").reset_index(drop=True)
    plan.attrs[PLAN_CONFIG_ATTR] = cfg.model_dump()  # lets render_all render exactly this plan
    log.info("planned %d image and %d text variants", int((plan["kind"] == "image").sum()), int((plan["kind"] == "text").sum()))
    return plan


def _encode_jpeg(image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def render_variants(source: bytes, seeds: list[int], cfg: AugmentationConfig) -> list[tuple[bytes, list[str]]]:
    """Decode ``source`` once and render one augmented JPEG per seed."""
    image = decode_rgb(source)
    results = []
    for seed in seeds:
        augmented, ops = augment_image(image, cfg, np.random.default_rng(seed))
        results.append((_encode_jpeg(augmented), ops))
    return results


def render_all(
    plan: pd.DataFrame,
    read: Callable[[str], bytes],
    write: Callable[[str, bytes], None],
    workers: int,
    progress: Callable[[int, int], None] | None = None,
    cfg: AugmentationConfig | None = None,
) -> pd.DataFrame:
    """Render every ``kind == "image"`` row of the plan in parallel threads and write it.

    Each source image is read and decoded once for all its variants. A source that cannot be
    read or decoded marks its variants with an ``error`` (the run goes on); a failing ``write``
    raises, since storage being down is not a data problem. Returns the plan with ``image_ops``
    ("+"-joined, "" for text rows) and ``error`` ("" when fine) columns.
    ``progress(done, total)`` counts rendered variants. ``cfg`` defaults to the config that
    plan_augmentations recorded in ``plan.attrs``; pass it when the plan was re-read from storage.
    """
    if cfg is None:
        if PLAN_CONFIG_ATTR not in plan.attrs:
            raise ValueError("render_all needs cfg: the plan carries no augmentation config (e.g. it was re-read from CSV)")
        cfg = AugmentationConfig.model_validate(plan.attrs[PLAN_CONFIG_ATTR])
    result = plan.copy()
    image_ops = np.full(len(result), "", dtype=object)
    errors = np.full(len(result), "", dtype=object)
    rows = result.reset_index(drop=True)
    rows = rows[rows["kind"] == "image"]  # index = row position in result
    # Plain tuples for the workers: they never touch a DataFrame.
    groups = [
        (str(source), frame.index.tolist(), [int(s) for s in frame["seed"]], [str(k) for k in frame["image_key"]])
        for source, frame in rows.groupby("source_image_key", sort=True)
    ]
    total = len(rows)

    def render_group(group: tuple[str, list[int], list[int], list[str]]) -> tuple[list[int], list[str], list[str]]:
        source_key, index, seeds, targets = group
        try:
            rendered = render_variants(read(source_key), seeds, cfg)
        except Exception as exc:  # noqa: BLE001 - a bad source must not stop the other renders
            log.warning("cannot render %s: %s", source_key, exc)
            return index, [""] * len(index), [f"{type(exc).__name__}: {exc}"[:200]] * len(index)
        for target, (data, _) in zip(targets, rendered):
            write(target, data)
        return index, ["+".join(ops) for _, ops in rendered], [""] * len(index)

    done = 0
    for positions, ops, failures in bounded_map(render_group, groups, workers=workers, total=len(groups)):
        image_ops[positions] = ops
        errors[positions] = failures
        done += len(positions)
        if progress is not None:
            progress(done, total)
    result["image_ops"] = pd.array(image_ops, dtype="str")
    result["error"] = pd.array(errors, dtype="str")
    return result


def _augmentation_label(image_ops: pd.Series, text_ops: pd.Series, kind: pd.Series) -> pd.Series:
    image_part = ("image:" + image_ops.where(image_ops != "", "none")).where(kind == "image", "")
    text_part = ("text:" + text_ops).where(text_ops != "", "")
    joined = image_part + ";" + text_part
    return joined.str.strip(";")


def build_augmented_pairs(train_pairs: pd.DataFrame, plan_with_ops: pd.DataFrame, cfg: AugmentationConfig) -> pd.DataFrame:
    """Originals (label 1, "none"), augmented positives (label 1, e.g. "image:hflip+crop;text:synonym")
    and ``cfg.negatives.per_positive`` negatives per positive (label 0, "negative").

    plan_with_ops is render_all's output (rows with an ``error`` are left out). Raises ValueError
    if a plan row does not come from one of these training pairs (guards against test leakage).
    Columns: recipe_id, image_key, caption, label, augmentation, source_image_key,
    negative_recipe_id (the recipe of a negative's caption, "" on positives); sorted.
    """
    train = _canonical_pairs(train_pairs)
    originals = train.assign(label=1, augmentation="none", source_image_key=train["image_key"])
    frames = [originals]
    if len(plan_with_ops):
        plan = plan_with_ops
        source_recipe = plan[["source_image_key", "recipe_id"]].merge(
            train[["image_key", "recipe_id"]].rename(columns={"image_key": "source_image_key"}),
            on=["source_image_key", "recipe_id"], how="left", indicator=True,
        )
        foreign = source_recipe["_merge"] != "both"
        if foreign.any():
            examples = sorted(source_recipe.loc[foreign, "source_image_key"].astype(str).unique())[:5]
            raise ValueError(f"{int(foreign.sum())} plan rows do not come from these training pairs, e.g. {examples}")
        is_image = plan["kind"] == "image"
        if is_image.any() and "image_ops" not in plan.columns:
            raise ValueError("plan has image variants without image_ops: render it with render_all first")
        image_ops = plan["image_ops"].fillna("").astype("str") if "image_ops" in plan.columns else pd.Series("", index=plan.index)
        errors = plan["error"].fillna("").astype("str") if "error" in plan.columns else pd.Series("", index=plan.index)
        ok = errors == ""
        augmented = plan.loc[ok, ["recipe_id", "image_key", "caption", "source_image_key"]].copy()
        augmented["label"] = 1
        augmented["augmentation"] = _augmentation_label(
            image_ops[ok], plan.loc[ok, "text_ops"].fillna("").astype("str"), plan.loc[ok, "kind"]
        )
        frames.append(augmented)
    positives = pd.concat(frames, ignore_index=True).drop_duplicates(["image_key", "caption"]).assign(negative_recipe_id="")
    combined = [positives]
    if cfg.negatives.per_positive > 0:
        negatives = sample_negatives(
            positives[["recipe_id", "image_key", "caption", "source_image_key"]], cfg.negatives.per_positive, cfg.seed
        )
        combined.append(negatives.assign(augmentation="negative"))
    result = pd.concat(combined, ignore_index=True)[AUGMENTED_COLUMNS]
    result = result.astype({c: "str" for c in AUGMENTED_COLUMNS if c != "label"}).astype({"label": "int64"})
    result = result.sort_values(
        ["recipe_id", "source_image_key", "image_key", "label", "caption"],
        ascending=[True, True, True, False, True], kind="stable",
    ).reset_index(drop=True)
    log.info("augmented pairs: %d positives, %d negatives", int((result["label"] == 1).sum()), int((result["label"] == 0).sum()))
    return result
