"""Recipe-level retrieval metrics, vectorized, with (paired) bootstrap confidence intervals.

A query is *recipe-level* relevant to every gallery item of the same recipe: the quality
of a ranking is the 1-based rank of its first relevant item (the "first hit").  All
metrics (R@K, MRR, median and mean rank) are functions of these first-hit ranks, so the
bootstrap resamples queries and recomputes metrics from the stored ranks, and the M1-M0
comparison resamples the *same* queries for both models (a paired bootstrap).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TIE_POLICY = (
    "pessimistic: a gallery item that is not relevant and scores exactly the same as the best "
    "relevant item ranks ahead of it (rank = 1 + number of irrelevant items scoring >= the best "
    "relevant score)"
)

# Rank metrics: a smaller value is better (for R@K and MRR a larger one).
LOWER_IS_BETTER = frozenset({"MedianRank", "MeanRank"})
# Queries per block when ranking, to bound the Q x G temporary arrays (~64 MB of float32 for
# a gallery of 16k items).
_QUERY_BLOCK = 1024
# Bootstrap resamples per block, to bound the B x Q resampled rank matrix.
_BOOTSTRAP_BLOCK = 256


def first_hit_ranks(
    similarity: np.ndarray, query_ids: np.ndarray, gallery_ids: np.ndarray
) -> np.ndarray:
    """1-based rank of the first relevant gallery item for every query.

    ``similarity[q, g]`` is the score of gallery item ``g`` for query ``q`` (higher is
    better); an item is relevant when ``gallery_ids[g] == query_ids[q]`` (same recipe).

    Tie policy (pessimistic): irrelevant items whose score *equals* the best relevant score
    rank ahead of it, so ``rank = 1 + #{irrelevant g : s[q, g] >= max relevant score}``.
    A model that scores everything the same therefore gets the worst rank, not the best.

    Raises ValueError on shape mismatch, non-finite scores, or a query with no relevant
    gallery item (its rank would be undefined).
    """
    similarity = np.asarray(similarity)
    query_ids = np.asarray(query_ids)
    gallery_ids = np.asarray(gallery_ids)
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be 2-D (queries x gallery), got shape {similarity.shape}")
    n_queries, n_gallery = similarity.shape
    if query_ids.shape != (n_queries,) or gallery_ids.shape != (n_gallery,):
        raise ValueError(
            f"ids do not match similarity {similarity.shape}: "
            f"query_ids {query_ids.shape}, gallery_ids {gallery_ids.shape}"
        )
    if not np.isfinite(similarity).all():
        raise ValueError("similarity contains NaN or infinite scores")

    ranks = np.empty(n_queries, dtype=np.int64)
    for start in range(0, n_queries, _QUERY_BLOCK):
        block = slice(start, start + _QUERY_BLOCK)
        scores = similarity[block]
        relevant = query_ids[block, None] == gallery_ids[None, :]
        has_relevant = relevant.any(axis=1)
        if not has_relevant.all():
            missing = query_ids[block][~has_relevant][:5].tolist()
            raise ValueError(f"queries without any relevant gallery item: {missing}")
        best_relevant = np.where(relevant, scores, -np.inf).max(axis=1)
        ahead = (~relevant) & (scores >= best_relevant[:, None])
        ranks[block] = 1 + ahead.sum(axis=1)
    return ranks


def _metrics_from_rank_matrix(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Metrics along the last axis of a (..., n_queries) rank array."""
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"R@{k}"] = (ranks <= k).mean(axis=-1)
    out["MRR"] = (1.0 / ranks).mean(axis=-1)
    out["MedianRank"] = np.median(ranks, axis=-1)
    out["MeanRank"] = ranks.mean(axis=-1)
    return out


def _validated_ranks(ranks: Sequence[int] | np.ndarray) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    if not np.issubdtype(ranks.dtype, np.number) or (ranks < 1).any():
        raise ValueError("ranks must be numbers >= 1 (1-based first-hit ranks)")
    return ranks.astype(np.float64)


def _validated_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"recall cut-offs must be positive integers, got {ks}")
    return ks


def summarize_ranks(ranks: Sequence[int] | np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@K for each K, MRR, MedianRank and MeanRank of first-hit ranks."""
    metrics = _metrics_from_rank_matrix(_validated_ranks(ranks), _validated_ks(ks))
    return {name: float(value) for name, value in metrics.items()}


def _bootstrap_indices(n_queries: int, n_samples: int, seed: int):
    """Yield blocks of resampled query indices; one generator so blocks are reproducible."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    rng = np.random.default_rng(seed)
    for start in range(0, n_samples, _BOOTSTRAP_BLOCK):
        size = min(_BOOTSTRAP_BLOCK, n_samples - start)
        yield rng.integers(0, n_queries, size=(size, n_queries))


def _percentile_interval(samples: np.ndarray, confidence: float) -> list[float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def _bootstrap_metric_samples(
    rank_arrays: Sequence[np.ndarray], ks: Sequence[int], n_samples: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """Metric values of each rank array over the same resampled query sets."""
    n_queries = rank_arrays[0].size
    chunks: list[list[dict[str, np.ndarray]]] = [[] for _ in rank_arrays]
    for idx in _bootstrap_indices(n_queries, n_samples, seed):
        for i, ranks in enumerate(rank_arrays):
            chunks[i].append(_metrics_from_rank_matrix(ranks[idx], ks))
    return [
        {name: np.concatenate([c[name] for c in per_array]) for name in per_array[0]}
        for per_array in chunks
    ]


def bootstrap_ci(
    ranks: Sequence[int] | np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    n_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 42,
) -> dict[str, list[float]]:
    """Percentile bootstrap interval of every metric, resampling queries with replacement."""
    ranks = _validated_ranks(ranks)
    samples = _bootstrap_metric_samples([ranks], _validated_ks(ks), n_samples, seed)[0]
    return {name: _percentile_interval(values, confidence) for name, values in samples.items()}


def paired_bootstrap_diff(
    ranks_m1: Sequence[int] | np.ndarray,
    ranks_m0: Sequence[int] | np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    n_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 42,
    *,
    queries_m1: Sequence | None = None,
    queries_m0: Sequence | None = None,
) -> dict[str, dict]:
    """Paired bootstrap of the M1 - M0 difference of every metric.

    Both rank arrays must describe the same queries in the same order; each resample draws
    one set of query indices and evaluates both models on it, so per-query difficulty
    cancels out.  Pass ``queries_m1``/``queries_m0`` (query identifiers) to have the
    alignment checked; a mismatch raises ValueError.

    Returns ``{metric: {"m0", "m1", "diff", "ci": [lo, hi], "p_value"}}`` where ``diff = m1 - m0``
    (for rank metrics a negative diff is an improvement) and ``p_value`` is the one-sided
    bootstrap p-value of "M1 is not better than M0" ((1 + resamples not better) / (1 + n)),
    what a multiple-comparison correction across runs (Holm) needs.
    """
    r1 = _validated_ranks(ranks_m1)
    r0 = _validated_ranks(ranks_m0)
    if r1.shape != r0.shape:
        raise ValueError(f"paired bootstrap needs the same queries: {r1.size} vs {r0.size} ranks")
    if (queries_m1 is None) != (queries_m0 is None):
        raise ValueError("pass query lists for both models or for neither")
    if queries_m1 is not None:
        q1, q0 = [str(q) for q in queries_m1], [str(q) for q in queries_m0]
        if len(q1) != r1.size:
            raise ValueError(f"{len(q1)} queries for {r1.size} ranks")
        if q1 != q0:
            first = next((i for i, (a, b) in enumerate(zip(q1, q0)) if a != b), min(len(q1), len(q0)))
            raise ValueError(f"query lists differ (first difference at position {first}); "
                             "both models must be evaluated on the same sorted queries")
    ks = _validated_ks(ks)
    point1 = _metrics_from_rank_matrix(r1, ks)
    point0 = _metrics_from_rank_matrix(r0, ks)
    s1, s0 = _bootstrap_metric_samples([r1, r0], ks, n_samples, seed)
    return {
        name: {
            "m0": float(point0[name]),
            "m1": float(point1[name]),
            "diff": float(point1[name] - point0[name]),
            "ci": _percentile_interval(s1[name] - s0[name], confidence),
            "p_value": _p_not_better(s1[name] - s0[name], lower_is_better=name in LOWER_IS_BETTER),
        }
        for name in point1
    }


def _p_not_better(differences: np.ndarray, *, lower_is_better: bool) -> float:
    not_better = (differences >= 0) if lower_is_better else (differences <= 0)
    return float((1 + int(np.count_nonzero(not_better))) / (1 + differences.size))


def holm_adjusted(p_values: dict[str, float]) -> dict[str, float]:
    """Holm–Bonferroni step-down adjusted p-values (family-wise error control over the family given).

    Sorted ascending, the i-th of m p-values is multiplied by (m - i), kept monotone and capped at 1.
    """
    ordered = sorted(p_values.items(), key=lambda item: (item[1], item[0]))
    adjusted, running = {}, 0.0
    m = len(ordered)
    for i, (key, p) in enumerate(ordered):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[key] = running
    return adjusted
