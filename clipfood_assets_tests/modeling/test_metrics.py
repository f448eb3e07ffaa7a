"""Retrieval metrics against a brute-force reference, tie policy and bootstrap behaviour."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from clipfood_assets.modeling.metrics import (
    bootstrap_ci,
    first_hit_ranks,
    paired_bootstrap_diff,
    summarize_ranks,
)


def brute_force_first_hit(similarity, query_ids, gallery_ids):
    """Sort each query's gallery with irrelevant items first among equal scores; find the first hit."""
    ranks = []
    for q in range(similarity.shape[0]):
        items = [
            (-float(similarity[q, g]), 0 if gallery_ids[g] != query_ids[q] else 1, g)
            for g in range(similarity.shape[1])
        ]
        items.sort()
        for position, (_, relevant, _) in enumerate(items, start=1):
            if relevant:
                ranks.append(position)
                break
    return ranks


def brute_force_summary(ranks, ks):
    out = {f"R@{k}": sum(r <= k for r in ranks) / len(ranks) for k in ks}
    out["MRR"] = sum(1.0 / r for r in ranks) / len(ranks)
    out["MedianRank"] = statistics.median(ranks)
    out["MeanRank"] = sum(ranks) / len(ranks)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_first_hit_ranks_and_metrics_match_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n_queries, n_gallery, n_recipes = 37, 53, 12
    # Scores from a small integer set so that many ties occur, relevant and irrelevant alike.
    similarity = rng.integers(0, 4, size=(n_queries, n_gallery)).astype(np.float32)
    gallery_ids = rng.integers(0, n_recipes, size=n_gallery)
    query_ids = rng.choice(np.unique(gallery_ids), size=n_queries)

    ranks = first_hit_ranks(similarity, query_ids, gallery_ids)
    expected = brute_force_first_hit(similarity, query_ids, gallery_ids)
    assert ranks.tolist() == expected

    ks = (1, 3, 5, 10)
    summary = summarize_ranks(ranks, ks)
    reference = brute_force_summary(expected, ks)
    assert summary.keys() == reference.keys()
    for name, value in reference.items():
        assert summary[name] == pytest.approx(value, abs=1e-12), name


def test_tie_policy_is_pessimistic():
    # Gallery: recipe 7 (relevant) and two irrelevant items, all with the same score.
    similarity = np.array([[0.5, 0.5, 0.5], [0.4, 0.5, 0.5], [0.4, 0.3, 0.5]])
    ranks = first_hit_ranks(similarity, np.array([7, 7, 7]), np.array([1, 2, 7]))
    assert ranks.tolist() == [3, 2, 1]


def test_several_relevant_items_first_one_counts():
    similarity = np.array([[0.1, 0.8, 0.3, 0.7]])
    # Relevant items at scores 0.3 and 0.7: the best one (0.7) is behind only 0.8.
    assert first_hit_ranks(similarity, np.array(["a"]), np.array(["b", "c", "a", "a"])).tolist() == [2]


def test_default_summary_keys():
    assert list(summarize_ranks([1, 2, 30])) == ["R@1", "R@5", "R@10", "MRR", "MedianRank", "MeanRank"]


@pytest.mark.parametrize(
    "similarity, query_ids, gallery_ids",
    [
        (np.zeros((2, 3)), np.array([1]), np.array([1, 2, 3])),  # query ids too short
        (np.zeros(3), np.array([1]), np.array([1, 2, 3])),  # not 2-D
        (np.array([[np.nan, 0.0]]), np.array([1]), np.array([1, 2])),  # NaN score
        (np.zeros((1, 2)), np.array([9]), np.array([1, 2])),  # no relevant gallery item
    ],
)
def test_first_hit_ranks_rejects_bad_input(similarity, query_ids, gallery_ids):
    with pytest.raises(ValueError):
        first_hit_ranks(similarity, query_ids, gallery_ids)


@pytest.mark.parametrize("ranks", [[], [0, 1], [[1, 2]], ["a"]])
def test_summary_rejects_bad_ranks(ranks):
    with pytest.raises(ValueError):
        summarize_ranks(ranks)


def _random_ranks(n, seed):
    return np.random.default_rng(seed).geometric(0.3, size=n)


def test_bootstrap_ci_contains_point_estimate_and_is_reproducible():
    ranks = _random_ranks(120, 0)
    point = summarize_ranks(ranks)
    ci = bootstrap_ci(ranks, n_samples=500, seed=3)
    assert ci == bootstrap_ci(ranks, n_samples=500, seed=3)
    assert ci.keys() == point.keys()
    for name, (lo, hi) in ci.items():
        assert lo <= point[name] <= hi, name
        assert lo < hi or name == "MedianRank", name


def test_bootstrap_ci_narrows_with_more_queries():
    few = bootstrap_ci(_random_ranks(50, 1), n_samples=400)
    many = bootstrap_ci(_random_ranks(2000, 1), n_samples=400)
    for name in ("R@1", "R@5", "MRR", "MeanRank"):
        assert many[name][1] - many[name][0] < 0.5 * (few[name][1] - few[name][0]), name


def test_paired_diff_of_model_with_itself_is_exactly_zero():
    ranks = _random_ranks(80, 2)
    result = paired_bootstrap_diff(ranks, ranks.copy(), n_samples=300)
    for name, entry in result.items():
        assert entry["diff"] == 0.0 and entry["ci"] == [0.0, 0.0], name
        assert entry["m0"] == entry["m1"]


def test_paired_diff_detects_a_consistent_improvement_that_unpaired_cis_overlap():
    rng = np.random.default_rng(5)
    m0 = rng.geometric(0.2, size=60)
    # M1 ranks the first hit one place better on a third of the queries (never worse).
    m1 = np.where((rng.random(60) < 0.33) & (m0 > 1), m0 - 1, m0)
    result = paired_bootstrap_diff(m1, m0, n_samples=1000)
    assert result["MeanRank"]["diff"] < 0
    assert result["MeanRank"]["ci"][1] < 0  # paired: whole interval below zero
    unpaired_m0, unpaired_m1 = bootstrap_ci(m0)["MeanRank"], bootstrap_ci(m1)["MeanRank"]
    assert unpaired_m1[1] > unpaired_m0[0]  # while the separate intervals overlap


def test_paired_diff_requires_aligned_queries():
    ranks = np.array([1, 2, 3])
    with pytest.raises(ValueError, match="same queries"):
        paired_bootstrap_diff(ranks, np.array([1, 2]))
    with pytest.raises(ValueError, match="differ"):
        paired_bootstrap_diff(ranks, ranks, queries_m1=["a", "b", "c"], queries_m0=["a", "c", "b"])
    with pytest.raises(ValueError):
        paired_bootstrap_diff(ranks, ranks, queries_m1=["a", "b", "c"])
    ok = paired_bootstrap_diff(ranks, ranks, queries_m1=["a", "b", "c"], queries_m0=["a", "b", "c"])
    assert ok["R@1"]["diff"] == 0.0
