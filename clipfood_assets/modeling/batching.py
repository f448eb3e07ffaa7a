"""Training data as optimizer steps: positive pairs, labelled negatives, token ids and pixels.

:func:`prepare_training_pairs` splits the augmented CSV into positives and each image's
labelled negative captions; :func:`epoch_batches` cuts a seeded permutation into steps;
:class:`StepBuilder` turns one step's pair indices into micro-batches (pixels, token ids,
recipe codes) and :class:`StepPrefetcher` builds the next step in a thread while the device
runs this one, so the host never waits on data between steps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from clipfood_assets.modeling.distributed import DistributedWorld, shard_bounds
from clipfood_assets.modeling.images import ImageSource
from clipfood_assets.modeling.losses import negatives_per_pair

UNKNOWN_RECIPE = "\x00unknown"  # recipe of a negative caption that matches no positive caption


@dataclass
class TrainingPairs:
    """Positive pairs (the contrastive batch) and the labelled negative captions of each image."""

    recipe_ids: np.ndarray
    image_keys: np.ndarray
    captions: np.ndarray
    negatives_by_image: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.recipe_ids)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for column in (self.recipe_ids, self.image_keys, self.captions):
            digest.update("\x1f".join(column.tolist()).encode("utf-8"))
        for key in sorted(self.negatives_by_image):
            digest.update(repr((key, self.negatives_by_image[key])).encode("utf-8"))
        return digest.hexdigest()

    def recipe_codes(self) -> dict[str, int]:
        """int64 code of every recipe id (pairs' and negatives'): a sorted index, the same in every process."""
        recipes = set(self.recipe_ids.tolist())
        recipes.update(recipe for negatives in self.negatives_by_image.values() for _, recipe in negatives)
        return {recipe: code for code, recipe in enumerate(sorted(recipes))}


def prepare_training_pairs(train_pairs: pd.DataFrame, *, use_labelled_negatives: bool = True) -> TrainingPairs:
    """Split labelled rows into positives (label 1) and per-image negative captions (label 0).

    A negative caption's recipe is read from the ``negative_recipe_id`` column that
    ``build_augmented_pairs`` writes (or a ``caption_recipe_id`` column), and only guessed from
    the positive pair with the same caption when neither is there; negatives that turn out to
    be the image's own recipe are dropped (they are not negatives).
    """
    missing = {"recipe_id", "image_key", "caption"} - set(train_pairs.columns)
    if missing:
        raise ValueError(f"training pairs lack columns {sorted(missing)}")
    frame = train_pairs.dropna(subset=["recipe_id", "image_key", "caption"])
    frame = frame.assign(recipe_id=frame["recipe_id"].astype(str), image_key=frame["image_key"].astype(str),
                         caption=frame["caption"].astype(str))
    if "label" in frame.columns:
        labels = pd.to_numeric(frame["label"], errors="coerce")
        if labels.isna().any() or not labels.isin([0, 1]).all():
            bad = frame["label"][labels.isna() | ~labels.isin([0, 1])].head(3).tolist()
            raise ValueError(f"label must be 0 or 1, got {bad}")
    else:
        labels = pd.Series(1, index=frame.index)
    positives = frame[labels == 1].drop_duplicates(["recipe_id", "image_key", "caption"])
    positives = positives.sort_values(["recipe_id", "image_key", "caption"], kind="stable")
    if len(positives) < 2:
        raise ValueError(f"need at least 2 positive pairs to train contrastively, got {len(positives)}")

    negatives_by_image: dict[str, list[tuple[str, str]]] = {}
    negatives = frame[labels == 0]
    if use_labelled_negatives and not negatives.empty:
        recipe_column = next((c for c in ("caption_recipe_id", "negative_recipe_id") if c in negatives.columns), None)
        if recipe_column is not None:
            caption_recipes = negatives[recipe_column].astype(str)
        else:
            # Fallback for frames without the column: augmented CSVs written before it existed, and
            # hand-made pairs. The recipe is guessed from the positive pair with the same caption.
            owners = positives.drop_duplicates("caption").set_index("caption")["recipe_id"]
            shared = positives.groupby("caption")["recipe_id"].nunique()
            owners = owners[shared[owners.index] == 1]  # a caption of several recipes identifies none
            caption_recipes = negatives["caption"].map(owners).fillna(UNKNOWN_RECIPE)
        image_recipe = positives.drop_duplicates("image_key").set_index("image_key")["recipe_id"]
        own_recipe = negatives["image_key"].map(image_recipe).fillna(negatives["recipe_id"])
        kept = negatives.assign(caption_recipe=caption_recipes)[caption_recipes.to_numpy() != own_recipe.to_numpy()]
        kept = kept[kept["image_key"].isin(image_recipe.index)].drop_duplicates(["image_key", "caption"])
        for key, group in kept.sort_values(["image_key", "caption"], kind="stable").groupby("image_key", sort=True):
            negatives_by_image[str(key)] = list(zip(group["caption"], group["caption_recipe"], strict=True))
    return TrainingPairs(
        recipe_ids=positives["recipe_id"].to_numpy(dtype=object),
        image_keys=positives["image_key"].to_numpy(dtype=object),
        captions=positives["caption"].to_numpy(dtype=object),
        negatives_by_image=negatives_by_image,
    )


def epoch_batches(n_pairs: int, batch: int, seed: int, epoch: int, min_pairs: int = 2) -> list[np.ndarray]:
    """Pair indices of each optimizer step of ``epoch``: a seeded permutation cut into batches.

    A trailing batch of fewer than ``min_pairs`` pairs is dropped (one pair has no negative
    to learn from; N processes need at least one pair each).
    """
    order = np.random.default_rng([seed, epoch]).permutation(n_pairs)
    batches = [order[i:i + batch] for i in range(0, n_pairs, batch)]
    return [b for b in batches if len(b) >= max(2, min_pairs)]


class TokenCache:
    """Token ids of every caption, computed once into one padded matrix; a batch is a row gather.

    ``batch(captions)`` pads to the batch's longest caption, rounded up to ``pad_multiple``
    (few distinct shapes for compiled towers); ids and mask are int64 ``[n, width]``.
    """

    def __init__(self, tokenizer, captions: Sequence[str], max_length: int) -> None:
        unique = list(dict.fromkeys(captions))
        encoded = tokenizer(unique, padding=False, truncation=True, max_length=max_length)["input_ids"]
        self._row = {caption: i for i, caption in enumerate(unique)}
        pad = tokenizer.pad_token_id
        pad = int(pad if pad is not None else tokenizer.eos_token_id)
        self.lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
        self.width = int(self.lengths.max()) if len(unique) else 1
        self._ids = np.full((len(unique), -(-self.width // 8) * 8), pad, dtype=np.int64)
        for i, ids in enumerate(encoded):
            self._ids[i, : len(ids)] = ids

    def batch(self, captions: Sequence[str], pad_multiple: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.fromiter((self._row[c] for c in captions), dtype=np.int64, count=len(captions))
        lengths = self.lengths[rows]
        width = int(lengths.max()) if len(rows) else 1
        if pad_multiple:
            width = min(-(-width // pad_multiple) * pad_multiple, self._ids.shape[1])
        ids = self._ids[rows, :width]
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        return torch.from_numpy(np.ascontiguousarray(ids)), torch.from_numpy(mask)


@dataclass
class MicroBatch:
    """One forward pass's inputs (CPU tensors, pinned when the step runs on CUDA). With a ``pad_multiple``
    (compiled towers) the rows of both towers are padded with copies of the first: only the first
    ``n_pairs`` images and ``n_pairs + len(negative_codes)`` captions count."""

    pixels: torch.Tensor | None  # uint8 [m, 3, H, W]; None: read from a device-resident table by image_keys
    image_keys: list[str]
    text_ids: torch.Tensor  # [m + n, L]: the m positive captions, then n labelled negatives
    text_mask: torch.Tensor
    n_pairs: int
    pair_codes: torch.Tensor  # int64 [m]: recipe code of each pair (TrainingPairs.recipe_codes)
    negative_codes: torch.Tensor  # int64 [n]: recipe code of each labelled negative


@dataclass
class Step:
    """One optimizer step: its micro-batches, global pair count and mean negatives per pair."""

    micros: list[MicroBatch]
    n_pairs: int
    negatives_per_pair: float


@dataclass(frozen=True)
class StepSharding:
    """Which pairs of each global step this process encodes (all of them in one process)."""

    world: DistributedWorld
    micro_batch: int  # pairs per forward pass in this process

    def local(self, batch: np.ndarray) -> np.ndarray:
        """This process's contiguous slice of ``batch`` (slices in rank order make the batch)."""
        start, stop = shard_bounds(len(batch), self.world.rank, self.world.world_size)
        return batch[start:stop]

    def images_before(self, batch: np.ndarray, pairs: TrainingPairs) -> set[str]:
        """Images of ``batch`` in earlier processes' slices (their negatives are theirs)."""
        start, _ = shard_bounds(len(batch), self.world.rank, self.world.world_size)
        return {str(k) for k in pairs.image_keys[batch[:start]]}

    def local_keys(self, batches: Sequence[np.ndarray], pairs: TrainingPairs) -> list[str]:
        return [str(k) for b in batches for k in pairs.image_keys[self.local(b)]]


class StepBuilder:
    """Builds a :class:`Step` from a step's pair indices (thread-safe: it only reads).

    Each image's labelled negatives go with its first occurrence in the step.  ``images``
    None: pixels come from a device-resident table the training loop holds (only keys here).
    """

    def __init__(self, pairs: TrainingPairs, sharding: StepSharding, tokens: TokenCache, images: ImageSource | None,
                 *, with_negatives: bool, feature_cache: bool, mask_same_recipe: bool, pad_multiple: int | None = None,
                 pin_memory: bool = False) -> None:
        self.pairs, self.sharding, self.tokens, self.images = pairs, sharding, tokens, images
        self.with_negatives, self.feature_cache, self.mask_same_recipe = with_negatives, feature_cache, mask_same_recipe
        self.pad_multiple, self.pin_memory = pad_multiple, pin_memory
        self.codes = pairs.recipe_codes()

    def _pinned(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.pin_memory() if self.pin_memory and not tensor.is_pinned() else tensor

    def build(self, batch: np.ndarray) -> Step:
        pairs, sharding = self.pairs, self.sharding
        seen = set(sharding.images_before(batch, pairs))
        local = sharding.local(batch)
        micros = []
        for start in range(0, len(local), sharding.micro_batch):
            idx = local[start:start + sharding.micro_batch]
            keys = [str(k) for k in pairs.image_keys[idx]]
            negative_captions, negative_recipes = [], []
            if self.with_negatives:
                for key in keys:
                    if key in seen:
                        continue
                    seen.add(key)
                    for caption, recipe in pairs.negatives_by_image.get(key, ()):
                        negative_captions.append(caption)
                        negative_recipes.append(recipe)
            texts = [str(c) for c in pairs.captions[idx]] + negative_captions
            if self.pad_multiple:  # rows too: a short step's micro-batch of 1 would be a graph of its own
                keys = keys + keys[:1] * (-len(keys) % self.pad_multiple)
                texts = texts + texts[:1] * (-len(texts) % self.pad_multiple)
            ids, mask = self.tokens.batch(texts, self.pad_multiple)
            pixels = self._pinned(self.images.get(keys)) if self.images is not None else None
            micros.append(MicroBatch(
                pixels=pixels, image_keys=keys, text_ids=self._pinned(ids), text_mask=self._pinned(mask),
                n_pairs=len(idx),
                pair_codes=self._pinned(torch.tensor([self.codes[str(r)] for r in pairs.recipe_ids[idx]],
                                                     dtype=torch.long)),
                negative_codes=self._pinned(torch.tensor([self.codes[r] for r in negative_recipes], dtype=torch.long)),
            ))
        return Step(micros, len(batch), self._negatives_per_pair(batch, micros))

    def _negatives_per_pair(self, batch: np.ndarray, micros: list[MicroBatch]) -> float:
        if self.feature_cache:  # every pair meets the whole global step
            return negatives_per_pair([str(r) for r in self.pairs.recipe_ids[batch]],
                                      self._step_negative_recipes(batch) if self.with_negatives else [],
                                      self.mask_same_recipe)
        return float(np.mean([negatives_per_pair(m.pair_codes.tolist(), m.negative_codes.tolist(),
                                                 self.mask_same_recipe) for m in micros]))

    def _step_negative_recipes(self, batch: np.ndarray) -> list[str]:
        """Recipes of the step's labelled negatives, each image's with its first occurrence."""
        seen: set[str] = set()
        recipes: list[str] = []
        for key in self.pairs.image_keys[batch]:
            if key not in seen:
                seen.add(key)
                recipes.extend(recipe for _, recipe in self.pairs.negatives_by_image.get(key, ()))
        return recipes


class StepPrefetcher:
    """Yields built steps in order while a worker thread builds the next ``depth`` ahead."""

    def __init__(self, builder: StepBuilder, batches: Sequence[np.ndarray], depth: int = 2) -> None:
        self._builder, self._batches, self._depth = builder, list(batches), max(1, depth)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="train-steps")

    def __iter__(self) -> Iterator[Step]:
        pending = [self._pool.submit(self._builder.build, b) for b in self._batches[: self._depth]]
        for index in range(len(self._batches)):
            step = pending.pop(0).result()
            ahead = index + self._depth
            if ahead < len(self._batches):
                pending.append(self._pool.submit(self._builder.build, self._batches[ahead]))
            yield step

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
