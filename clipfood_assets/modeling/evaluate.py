"""Recipe-level retrieval evaluation of a CLIP model on the test pairs, and M1-vs-M0 comparison.

Protocol (the same for every model, so results pair up query by query):

- text->image: one query per test recipe, its first caption in sorted order; the gallery
  is every unique test image; a hit is any image of the query's recipe.
- image->text: one query per unique test image; the gallery is every unique
  (recipe, caption); a hit is any caption of the image's recipe.

Queries are sorted (recipe id, image key) so two models' first-hit ranks align for the
paired bootstrap.  Ranking is one matrix product and one vectorized pass (metrics.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from clipfood_assets.modeling.clip import (
    compile_towers,
    describe_device,
    resolve_precision,
    towers_compiled,
)
from clipfood_assets.modeling.config import EvaluationSettings, ExperimentConfig
from clipfood_assets.modeling.efficiency import configure_cpu_threads
from clipfood_assets.modeling.embed import embed_images, embed_texts
from clipfood_assets.modeling.images import ImageSource, LoadImage
from clipfood_assets.modeling.metrics import (
    TIE_POLICY,
    bootstrap_ci,
    first_hit_ranks,
    paired_bootstrap_diff,
    summarize_ranks,
)

DIRECTIONS = ("text_to_image", "image_to_text")
PRIMARY_METRIC = ("text_to_image", "R@1")
PROTOCOL = {
    "tie_policy": TIE_POLICY,
    "text_to_image": (
        "queries = unique recipe captions (one per test recipe: its first caption in sorted order), "
        "sorted by recipe_id; gallery = unique test images; hit = any image of the query's recipe"
    ),
    "image_to_text": (
        "queries = unique test images sorted by image_key; gallery = unique (recipe_id, caption) pairs; "
        "hit = any caption of the image's recipe"
    ),
}


class RetrievalSets:
    """Queries and galleries of both directions, derived once from the test pairs."""

    def __init__(self, test_pairs: pd.DataFrame) -> None:
        missing = {"recipe_id", "image_key", "caption"} - set(test_pairs.columns)
        if missing:
            raise ValueError(f"test pairs lack columns {sorted(missing)}")
        pairs = test_pairs[["recipe_id", "image_key", "caption"]].dropna()
        if pairs.empty:
            raise ValueError("no test pairs to evaluate")
        pairs = pairs.assign(recipe_id=pairs["recipe_id"].astype(str), image_key=pairs["image_key"].astype(str),
                             caption=pairs["caption"].astype(str))
        self.n_pairs = len(pairs)

        images = pairs[["image_key", "recipe_id"]].drop_duplicates()
        conflicting = images["image_key"][images["image_key"].duplicated()]
        if not conflicting.empty:
            raise ValueError(f"images assigned to several recipes: {sorted(set(conflicting))[:5]}")
        images = images.sort_values("image_key", kind="stable")
        self.image_keys = images["image_key"].to_numpy()
        self.image_recipes = images["recipe_id"].to_numpy()

        captions = pairs[["recipe_id", "caption"]].drop_duplicates().sort_values(["recipe_id", "caption"], kind="stable")
        self.caption_texts = captions["caption"].to_numpy()
        self.caption_recipes = captions["recipe_id"].to_numpy()
        # First caption (sorted) of each recipe, recipes sorted: rows of `captions` already are.
        first = ~pd.Series(self.caption_recipes).duplicated().to_numpy()
        self.query_caption_index = np.flatnonzero(first)
        self.query_recipes = self.caption_recipes[first]

        self.n_recipes = int(pd.Series(self.image_recipes).nunique())
        without_images = set(self.query_recipes) - set(self.image_recipes)
        if without_images:  # impossible from pairs (each row has an image), kept as a guard
            raise ValueError(f"recipes without test images: {sorted(without_images)[:5]}")

    @property
    def unique_texts(self) -> list[str]:
        """Distinct caption strings to embed (the same caption of two recipes is embedded once)."""
        return list(dict.fromkeys(self.caption_texts.tolist()))


def _examples(
    direction: str,
    similarity: np.ndarray,
    query_labels: Sequence[str],
    query_recipes: np.ndarray,
    gallery_labels: Sequence[str],
    gallery_recipes: np.ndarray,
    ranks: np.ndarray,
    *,
    num_examples: int,
    top_k: int,
    seed: int,
) -> list[dict]:
    n_queries = similarity.shape[0]
    chosen = np.sort(np.random.default_rng(seed).choice(n_queries, size=min(num_examples, n_queries), replace=False))
    examples = []
    for q in chosen:
        order = np.argsort(-similarity[q], kind="stable")[:top_k]
        examples.append({
            "direction": direction,
            "query": str(query_labels[q]),
            "query_recipe_id": str(query_recipes[q]),
            "top": [
                {
                    "key": str(gallery_labels[g]),
                    "recipe_id": str(gallery_recipes[g]),
                    "score": round(float(similarity[q, g]), 6),
                    "hit": bool(gallery_recipes[g] == query_recipes[q]),
                }
                for g in order
            ],
            "first_hit_rank": int(ranks[q]),
        })
    return examples


@dataclass
class _Ranked:
    ranks: dict[str, np.ndarray]
    t2i_similarity: np.ndarray
    i2t_similarity: np.ndarray
    image_stats: object
    text_stats: object


def compile_pays(evaluation: EvaluationSettings, device: torch.device | str, n_items: int) -> bool:
    """Whether an evaluation of ``n_items`` images and captions runs compiled towers: ``evaluation.compile``
    on, or auto on CUDA from ``evaluation.compile_min_items`` (a smaller one is done before a compile is)."""
    if evaluation.compile != "auto":
        return evaluation.compile == "on"
    return torch.device(device).type == "cuda" and n_items >= evaluation.compile_min_items


def prepare_for_inference(model, evaluation: EvaluationSettings, device: torch.device | str, n_items: int):
    """``model`` (owned by the evaluation) made fast on ``device`` for ``n_items`` images and captions: in
    bf16 its frozen base is cast to bf16 in place, adapters and ``logit_scale`` kept fp32 (the training's
    layout, so an unmerged adapted model is evaluated as validation evaluated it), and its towers
    compiled when that pays (:func:`compile_pays`)."""
    from clipfood_assets.modeling.lora import cast_adapter_inputs, hold_base_in

    device = torch.device(device)
    if resolve_precision(device, evaluation.precision) == "bf16":
        hold_base_in(model, torch.bfloat16)
        cast_adapter_inputs(model, False)  # no dropout in evaluation: the same numbers, one copy fewer
    if compile_pays(evaluation, device, n_items) and not towers_compiled(model):
        compile_towers(model)
    return model


def _rank(model, processor, sets: RetrievalSets, images: ImageSource | LoadImage, *, cfg: ExperimentConfig, device,
          workers=None) -> _Ranked:
    """Embed both sides once and rank: first-hit ranks of every query, both directions."""
    evaluation = cfg.evaluation
    configure_cpu_threads(device)
    batch_size = evaluation.batch_size_on(device)
    texts = sets.unique_texts
    # Towers a training compiled evaluate a small set eagerly: new graphs would cost more than they save.
    eager = towers_compiled(model) and not compile_pays(evaluation, device, len(sets.image_keys) + len(texts))
    with torch.compiler.set_stance("force_eager") if eager else contextlib.nullcontext():
        image_emb, image_stats = embed_images(
            model, processor, sets.image_keys.tolist(), images, batch_size=batch_size,
            device=device, precision=evaluation.precision, workers=workers or evaluation.num_workers or None,
            fast_jpeg_decode=evaluation.fast_jpeg_decode,
        )
        text_emb, text_stats = embed_texts(
            model, processor, texts, batch_size=batch_size, device=device, precision=evaluation.precision,
        )
    row_of_text = {text: i for i, text in enumerate(texts)}
    caption_emb = text_emb[[row_of_text[t] for t in sets.caption_texts]]

    caption_vs_image = caption_emb @ image_emb.T  # [captions, images]
    t2i_similarity = caption_vs_image[sets.query_caption_index]
    i2t_similarity = caption_vs_image.T
    ranks = {
        "text_to_image": first_hit_ranks(t2i_similarity, sets.query_recipes, sets.image_recipes),
        "image_to_text": first_hit_ranks(i2t_similarity, sets.image_recipes, sets.caption_recipes),
    }
    return _Ranked(ranks, t2i_similarity, i2t_similarity, image_stats, text_stats)


def validation_metrics(
    model, processor, pairs: pd.DataFrame, images: ImageSource | LoadImage, *, cfg: ExperimentConfig, device,
) -> dict[str, dict[str, float]]:
    """Recipe-level R@K / MRR / ranks both ways on ``pairs`` (same protocol as the test evaluation,
    no bootstrap): ``{"text_to_image": {"R@1": …}, "image_to_text": {…}}``. For per-epoch validation."""
    sets = RetrievalSets(pairs)
    ranked = _rank(model, processor, sets, images, cfg=cfg, device=device)
    return {d: summarize_ranks(ranked.ranks[d], cfg.evaluation.recall_at) for d in DIRECTIONS}


def evaluate_retrieval(
    model,
    processor,
    test_pairs: pd.DataFrame,
    images: ImageSource | LoadImage,
    *,
    cfg: ExperimentConfig,
    device: torch.device | str,
    label: str,
    parameter_counts: tuple[int, int] | None = None,
    workers: int | None = None,
) -> tuple[dict, list[dict]]:
    """Evaluate ``model`` on the test pairs: results JSON (see module doc) and qualitative examples.

    ``parameter_counts`` = (trainable, total) to report; by default counted on ``model``
    (a merged LoRA model then reports 0 trainable: pass the training run's counts).
    ``images``: the packed store or an encoded-bytes loader (see :func:`embed_images`).  The
    evaluation owns ``model``: on CUDA it is cast and compiled (:func:`prepare_for_inference`).
    """
    from clipfood_assets.modeling.lora import count_parameters

    sets = RetrievalSets(test_pairs)
    counts = parameter_counts if parameter_counts is not None else count_parameters(model)
    model = prepare_for_inference(model, cfg.evaluation, device, len(sets.image_keys) + len(sets.unique_texts))
    ranked = _rank(model, processor, sets, images, cfg=cfg, device=device, workers=workers)
    return _results(label, sets, ranked, cfg, device, counts), _all_examples(sets, ranked, cfg)


def _results(label: str, sets: RetrievalSets, ranked: _Ranked, cfg: ExperimentConfig, device,
             parameter_counts: tuple[int, int]) -> dict:
    """The results JSON of one evaluation (metrics, bootstrap CIs, per-query ranks, efficiency)."""
    evaluation, ranks, ks = cfg.evaluation, ranked.ranks, cfg.evaluation.recall_at
    queries = {"text_to_image": sets.query_recipes.tolist(), "image_to_text": sets.image_keys.tolist()}
    peak = max((ranked.image_stats, ranked.text_stats), key=lambda s: s.peak_memory_bytes)
    trainable, total = parameter_counts
    return {
        "model": label,
        "n_pairs": sets.n_pairs,
        "n_recipes": sets.n_recipes,
        "n_images": len(sets.image_keys),
        "metrics": {d: summarize_ranks(ranks[d], ks) for d in DIRECTIONS},
        "confidence_intervals": {
            d: bootstrap_ci(ranks[d], ks, n_samples=evaluation.bootstrap_samples,
                            confidence=evaluation.confidence, seed=cfg.seed)
            for d in DIRECTIONS
        },
        "first_hit_ranks": {d: {"queries": queries[d], "ranks": ranks[d].tolist()} for d in DIRECTIONS},
        "efficiency": {
            "images_per_s": ranked.image_stats.items_per_s,
            "texts_per_s": ranked.text_stats.items_per_s,
            "peak_memory_bytes": peak.peak_memory_bytes,
            "peak_memory_kind": peak.peak_memory_kind,
            "device": describe_device(device),
            "total_parameters": int(total),
            "trainable_parameters": int(trainable),
        },
        "protocol": dict(PROTOCOL),
    }


def _all_examples(sets: RetrievalSets, ranked: _Ranked, cfg: ExperimentConfig) -> list[dict]:
    """Qualitative examples both ways: each query's top-k gallery items and its first-hit rank."""
    evaluation, ranks = cfg.evaluation, ranked.ranks
    common = {"num_examples": evaluation.num_examples, "top_k": evaluation.top_k_examples, "seed": cfg.seed}
    return _examples(
        "text_to_image", ranked.t2i_similarity, sets.caption_texts[sets.query_caption_index], sets.query_recipes,
        sets.image_keys, sets.image_recipes, ranks["text_to_image"], **common,
    ) + _examples(
        "image_to_text", ranked.i2t_similarity, sets.image_keys, sets.image_recipes,
        sets.caption_texts, sets.caption_recipes, ranks["image_to_text"], **common,
    )


def compare_to_baseline(results_m1: dict, results_m0: dict, cfg: ExperimentConfig) -> dict:
    """Paired bootstrap of M1 - M0 on every metric and direction; H1 = primary metric's CI above 0.

    Raises ValueError when the two results were not computed on the same queries.
    """
    comparison: dict = {}
    evaluation = cfg.evaluation
    for direction in DIRECTIONS:
        m1, m0 = results_m1["first_hit_ranks"][direction], results_m0["first_hit_ranks"][direction]
        comparison[direction] = paired_bootstrap_diff(
            m1["ranks"], m0["ranks"], evaluation.recall_at, n_samples=evaluation.bootstrap_samples,
            confidence=evaluation.confidence, seed=cfg.seed, queries_m1=m1["queries"], queries_m0=m0["queries"],
        )
    direction, metric = PRIMARY_METRIC
    if metric not in comparison[direction]:
        raise ValueError(f"primary metric {metric} needs 1 in evaluation.recall_at")
    comparison["h1_supported"] = bool(comparison[direction][metric]["ci"][0] > 0)
    comparison["primary_metric"] = f"{direction}/{metric}"
    return comparison
