"""The data zone's work against the lake: read the trusted zone, copy images, render augmentations.

Pure functions in trusted/pairs/augment do the logic; this module only moves bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

import pandas as pd

from clipfood_assets.data.pairs import build_positive_pairs, exclude_quarantined, split_by_recipe
from clipfood_assets.data.quarantine import quarantine_frame
from clipfood_assets.data.parallel import bounded_map
from clipfood_assets.data.trusted import iter_lines, parse_image_keys, parse_recipes, validate_images
from clipfood_assets.lake.base import Lake, LakeError, ObjectNotFound
from clipfood_assets.lake.shards import ShardLedger, ShardPlan, ShardTask, run_tasks, split_by_shard
from clipfood_assets.lake.tables import SchemaError, read_table, write_table
from clipfood_assets.lake.layout import (
    AUGMENTED_IMAGES_PREFIX,
    FINE_TUNING_ZONE,
    IMAGE_COPIES_KEY,
    IMAGES_PREFIX,
    RECIPES_KEY,
    TEST_PAIRS_KEY,
    VALIDATION_PAIRS_KEY,
    TRAIN_PAIRS_KEY,
    TRUSTED_IMAGES_PREFIX,
    TRUSTED_ZONE,
)

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class PositivePairs:
    train: pd.DataFrame
    test: pd.DataFrame
    validation: pd.DataFrame  # carved from the training recipes: model selection, never training
    quarantine: pd.DataFrame
    n_recipes_read: int
    n_images_listed: int
    exact_duplicate_recipes: int = 0
    folder_markers: int = 0  # zero-byte "folder/" objects skipped, not quarantined
    stats: dict = field(default_factory=dict)


def _parallel(fn, items: list, workers: int, progress: Progress | None = None) -> list:
    return list(bounded_map(fn, items, workers=workers, total=len(items), progress=progress))


def carve_validation(train: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation): ``fraction`` of the training recipes, by the same seeded recipe hash as the
    test split, so the three sets are disjoint by recipe and reproducible. An empty validation set when
    ``fraction`` is 0 or fewer than two training recipes remain."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0 or train["recipe_id"].nunique() < 2:
        return train, train.iloc[0:0]
    return split_by_recipe(train, test_size=fraction, seed=seed)


def read_positive_pairs(
    lake: Lake,
    *,
    test_size: float = 0.2,
    validation_fraction: float = 0.1,
    seed: int = 42,
    min_caption_chars: int = 3,
    max_caption_chars: int = 200,
    max_image_pixels: int = 40_000_000,
    max_line_bytes: int = 1_000_000,
    workers: int = 16,
    progress: Progress | None = None,
) -> PositivePairs:
    """Trusted zone -> positive pairs split by recipe into train / validation / test (disjoint by
    recipe; ``validation_fraction`` of the training recipes, 0 for none); every bad record
    quarantined with its reason."""
    try:
        recipes, recipe_quarantine = parse_recipes(
            iter_lines(lake.iter_chunks(TRUSTED_ZONE, RECIPES_KEY), max_line_bytes), max_line_bytes
        )
    except ObjectNotFound:
        raise LakeError(
            f"the trusted zone has no {lake.uri(TRUSTED_ZONE, RECIPES_KEY)}; "
            "write one (e.g. `clipfood synth`) before building pairs"
        ) from None
    keys: list[str] = []
    folder_markers = 0
    for obj in lake.list(TRUSTED_ZONE, TRUSTED_IMAGES_PREFIX):
        # Zero-byte "folder" objects (images/, images/sub/) are how S3 consoles show folders.
        if obj.key.endswith("/") and obj.size == 0:
            folder_markers += 1
        else:
            keys.append(obj.key)
    images, key_quarantine = parse_image_keys(keys)

    # Only images that could pair are downloaded to be checked: the rest is quarantined by key alone.
    known = images[images["recipe_id"].isin(set(recipes["recipe_id"]))]
    image_quarantine = validate_images(
        known["image_key"].tolist(),
        read=lambda key: lake.get_bytes(TRUSTED_ZONE, key),
        workers=workers,
        max_pixels=max_image_pixels,
        progress=progress,
    )
    images = exclude_quarantined(images, image_quarantine)

    pairs, pair_quarantine = build_positive_pairs(
        recipes, images, min_caption_chars=min_caption_chars, max_caption_chars=max_caption_chars
    )
    train, test = split_by_recipe(pairs, test_size=test_size, seed=seed)
    train, validation = carve_validation(train, validation_fraction, seed)
    quarantine = quarantine_frame([*recipe_quarantine, *key_quarantine, *image_quarantine, *pair_quarantine])
    return PositivePairs(
        train=train.reset_index(drop=True),
        test=test.reset_index(drop=True),
        validation=validation.reset_index(drop=True),
        quarantine=quarantine,
        n_recipes_read=len(recipes),
        n_images_listed=len(keys),
        exact_duplicate_recipes=int(recipes.attrs.get("exact_duplicates", 0)),
        folder_markers=folder_markers,
    )


@dataclass
class CopyStats:
    copied: int
    skipped: int
    deleted: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return (self.copied + self.skipped) / self.seconds if self.seconds > 0 else 0.0


def read_copy_record(lake: Lake) -> dict[str, tuple[str, int, str]]:
    """image key -> (source ETag, source size, copy ETag) as recorded by the last copy_images."""
    try:
        table = read_table(lake.get_bytes(FINE_TUNING_ZONE, IMAGE_COPIES_KEY))
        columns = ["image_key", "source_etag", "source_size", "copy_etag"]
        return {key: (etag, int(size), copy) for key, etag, size, copy in table[columns].itertuples(index=False)}
    except ObjectNotFound:
        return {}
    except (SchemaError, KeyError, ValueError) as exc:  # a damaged record only costs re-copies
        log.warning("ignoring unreadable copy record %s: %s", IMAGE_COPIES_KEY, exc)
        return {}


COPY_STAGE = "image_copy"


def copy_ledger(lake: Lake) -> ShardLedger:
    """Where the sharded image copy keeps its tasks and completion records (fine-tuning zone, ``_shards/image_copy/``)."""
    return ShardLedger(lake, FINE_TUNING_ZONE, COPY_STAGE)


def plan_image_copy(lake: Lake, image_keys: Iterable[str], *, n_shards: int = 1) -> ShardPlan:
    """The copies to make, one task per shard (by :func:`~clipfood_assets.lake.shards.shard_of` of the key)
    holding images whose copy is missing or stale; unchanged images (see :func:`copy_images`) give no task.

    Each task item is ``{"key", "etag", "size"}`` of the source as listed now. LakeError when a paired image
    is not in the trusted zone; ValueError for an empty key."""
    wanted = set(image_keys)
    if "" in wanted or any(not isinstance(k, str) for k in wanted):
        raise ValueError("image keys must be non-empty strings")
    source = {o.key: (o.etag, o.size) for o in lake.list(TRUSTED_ZONE, TRUSTED_IMAGES_PREFIX) if o.key in wanted}
    missing = sorted(wanted - set(source))
    if missing:
        raise LakeError(f"{len(missing)} paired images are not in the trusted zone, e.g. {missing[:3]}")
    record = read_copy_record(lake)
    present = {o.key: o for o in lake.list(FINE_TUNING_ZONE, IMAGES_PREFIX) if o.key in wanted}

    def unchanged(key: str) -> bool:
        (etag, size), copy = source[key], present.get(key)
        return copy is not None and copy.size == size and record.get(key) == (etag, size, copy.etag)

    todo = ({"key": k, "etag": source[k][0], "size": int(source[k][1])} for k in sorted(wanted) if not unchanged(k))
    return copy_ledger(lake).plan(split_by_shard(todo, "key", n_shards), n_shards)


def copy_shard(lake: Lake, task: ShardTask, rows: list[dict], *, workers: int = 16,
               progress: Progress | None = None) -> dict:
    """Copy one shard's images server-side; its completion record: ``{"copies": [[key, source ETag, source
    size, copy ETag], ...]}``."""
    keys = [row["key"] for row in rows]
    etags = _parallel(lambda k: lake.copy(TRUSTED_ZONE, k, FINE_TUNING_ZONE, k), keys, workers, progress)
    return {"copies": [[r["key"], r["etag"], int(r["size"]), etag] for r, etag in zip(rows, etags)]}


def commit_image_copy(lake: Lake, image_keys: Iterable[str], plan: ShardPlan, *, workers: int = 16,
                      seconds: float = 0.0) -> CopyStats:
    """Once every shard of ``plan`` is done: check every paired image is in place, write the copy record,
    then remove the images no longer paired. ShardsIncomplete when a shard is not done (nothing written)."""
    start = time.perf_counter()
    ledger = copy_ledger(lake)
    records = ledger.records(plan)
    wanted = sorted(set(image_keys))
    old = read_copy_record(lake)
    copied = {key: (etag, int(size), copy) for r in records.values() for key, etag, size, copy in r["copies"]}
    after = {o.key: o for o in lake.list(FINE_TUNING_ZONE, IMAGES_PREFIX)}
    identity = {k: copied.get(k) or old.get(k) for k in wanted}
    incomplete = [k for k in wanted if identity[k] is None or k not in after or after[k].size != identity[k][1]]
    if incomplete:
        raise LakeError(
            f"{len(incomplete)} image copies are missing or have the wrong size after copying, e.g. {incomplete[:3]}; "
            "nothing was removed"
        )
    lake.put_bytes(
        FINE_TUNING_ZONE,
        IMAGE_COPIES_KEY,
        write_table(pd.DataFrame({
            "image_key": wanted,
            "source_etag": [identity[k][0] for k in wanted],
            "source_size": [identity[k][1] for k in wanted],
            "copy_etag": [after[k].etag for k in wanted],
        })),
        "text/csv",
    )
    keep = set(wanted)
    stale = sorted(k for k in after if k not in keep)
    _parallel(lambda k: lake.delete(FINE_TUNING_ZONE, k), stale, workers, None)
    ledger.forget(plan)
    return CopyStats(len(copied), len(wanted) - len(copied), len(stale), seconds + time.perf_counter() - start)


def copy_images(
    lake: Lake, image_keys: list[str], *, workers: int = 16, progress: Progress | None = None,
    n_shards: int = 1, processes: int = 1,
) -> CopyStats:
    """Mirror the paired images into the fine-tuning zone with server-side copies.

    A copy is skipped when its source is unchanged: the source's own ETag and size equal those
    recorded when the copy was made (``IMAGE_COPIES_KEY``), and the copy is still the one made
    then (its ETag as recorded). A copy's ETag is never compared with its source's: a multipart
    upload's ETag (``<md5>-2``) is not the ETag a server-side copy of it gets. Images no longer
    paired are removed only after every wanted copy is in place and the record is written, so
    the zone always holds at least the images the CSVs name.

    The copies are made shard by shard (``n_shards`` by key hash, in ``processes`` spawned processes when
    more than 1): a shard already done by an interrupted call is not copied again. What the Dagster asset
    runs as one step per shard: :func:`plan_image_copy`, :func:`copy_shard`, :func:`commit_image_copy`.
    """
    start = time.perf_counter()
    keys = list(image_keys)
    plan = plan_image_copy(lake, keys, n_shards=n_shards)
    work = partial(_copy_work, lake, workers=workers, progress=progress if processes <= 1 else None)
    run_tasks(copy_ledger(lake), plan.tasks, work, processes=processes)
    return commit_image_copy(lake, keys, plan, workers=workers, seconds=time.perf_counter() - start)


def _copy_work(lake: Lake, task: ShardTask, rows: list[dict], *, workers: int, progress: Progress | None) -> dict:
    return copy_shard(lake, task, rows, workers=workers, progress=progress)


def remove_stale_augmented_images(lake: Lake, keep: set[str], workers: int = 16) -> int:
    """Delete augmented images no pair names any more; call it once the new augmented CSV is stored."""
    stale = [o.key for o in lake.list(FINE_TUNING_ZONE, AUGMENTED_IMAGES_PREFIX) if o.key not in keep]
    _parallel(lambda k: lake.delete(FINE_TUNING_ZONE, k), stale, workers, None)
    return len(stale)


def augment_training_pairs(
    lake: Lake, train_pairs: pd.DataFrame, cfg, *, workers: int = 2, progress: Progress | None = None
) -> pd.DataFrame:
    """Render the planned image variants into augmented_images/ and label the pairs (with negatives).

    Nothing is deleted here: the previous augmented CSV still names the old images until the new
    one is stored; then :func:`remove_stale_augmented_images` removes what it no longer names.
    """
    from clipfood_assets.data.augment import build_augmented_pairs, plan_augmentations, render_all

    plan = plan_augmentations(train_pairs, cfg)
    rendered = render_all(
        plan,
        read=lambda key: lake.get_bytes(FINE_TUNING_ZONE, key),
        write=lambda key, data: lake.put_bytes(FINE_TUNING_ZONE, key, data, "image/jpeg"),
        workers=workers,
        progress=progress,
    )
    return build_augmented_pairs(train_pairs, rendered, cfg)


# ---------------------------------------------------------------------------
# the refresh guard: good artifacts are never replaced by degenerate ones
# ---------------------------------------------------------------------------


class DegenerateRefresh(ValueError):
    """A refresh would replace the data zone's pairs with far fewer (or none); nothing was written."""


@dataclass(frozen=True)
class PairCounts:
    train: int
    test: int

    @property
    def total(self) -> int:
        return self.train + self.test


def stored_pair_counts(lake: Lake) -> PairCounts | None:
    """Rows of the pair CSVs the data zone holds now (validation counts as training: it is carved from
    it); None when there are none (first build)."""
    counts = []
    for key in (TRAIN_PAIRS_KEY, TEST_PAIRS_KEY, VALIDATION_PAIRS_KEY):
        try:
            counts.append(len(read_table(lake.get_bytes(FINE_TUNING_ZONE, key))))
        except ObjectNotFound:
            if key == VALIDATION_PAIRS_KEY:  # a data zone built before the validation split
                counts.append(0)
                continue
            return None
        except SchemaError as exc:  # unreadable artifacts are not good artifacts to protect
            log.warning("cannot read %s (%s); the refresh guard has nothing to compare with", key, exc)
            return None
    return PairCounts(counts[0] + counts[2], counts[1])


def refresh_refusal(previous: PairCounts | None, new: PairCounts, max_drop_fraction: float) -> str | None:
    """Why ``new`` pairs must not replace ``previous`` (None: fine).

    Degenerate: no training or no test pairs at all, or, when pairs exist, fewer than
    ``(1 - max_drop_fraction)`` of them are left.
    """
    if not 0.0 <= max_drop_fraction <= 1.0:
        raise ValueError(f"max_drop_fraction must be in [0, 1], got {max_drop_fraction}")
    change = (
        f"train {previous.train} -> {new.train}, test {previous.test} -> {new.test}"
        if previous is not None else f"train {new.train}, test {new.test}"
    )
    if new.train == 0 or new.test == 0:
        return f"the refresh leaves no {'training' if new.train == 0 else 'test'} pairs ({change})"
    if previous is not None and previous.total > 0:
        dropped = 1.0 - new.total / previous.total
        if dropped > max_drop_fraction:
            return (
                f"pairs would drop by {dropped:.0%} ({previous.total} -> {new.total}; {change}), "
                f"more than the allowed {max_drop_fraction:.0%}"
            )
    return None


def guard_refresh(
    lake: Lake, pairs: PositivePairs, *, max_drop_fraction: float = 0.5, accept: bool = False
) -> str | None:
    """Stop a refresh whose pairs are degenerate before anything is written or deleted.

    Raises DegenerateRefresh (with what was read and what was quarantined, and how to accept
    it); with ``accept`` returns the refusal it overrode instead (None when there was none).
    """
    refusal = refresh_refusal(stored_pair_counts(lake), PairCounts(len(pairs.train) + len(pairs.validation), len(pairs.test)), max_drop_fraction)
    if refusal is None or accept:
        return refusal
    reasons = pairs.quarantine["reason"].value_counts().head(3).to_dict() if len(pairs.quarantine) else {}
    raise DegenerateRefresh(
        f"refusing to refresh the data zone: {refusal}. The trusted zone gave {pairs.n_recipes_read} recipes "
        f"and {pairs.n_images_listed} images" + (f" (most quarantined: {reasons})" if reasons else "")
        + ". Nothing was written or deleted. If this is intended, accept it: `clipfood materialize --force`, "
        "or set accept_degenerate_refresh: true in the positive_pairs config."
    )
