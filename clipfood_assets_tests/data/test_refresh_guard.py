"""The refresh guard's rule, on its own: when do new pairs count as degenerate?"""

from __future__ import annotations

import pytest

from clipfood_assets.data.prepare import PairCounts, refresh_refusal


@pytest.mark.parametrize(
    "previous, new, fraction, refused",
    [
        (PairCounts(28, 7), PairCounts(0, 0), 0.5, "no training pairs"),  # the issue: emptied recipes.jsonl
        (PairCounts(28, 7), PairCounts(30, 0), 0.5, "no test pairs"),  # more pairs, but the test set is gone
        (None, PairCounts(0, 0), 0.5, "no training pairs"),  # nothing to train on, even on a first build
        (PairCounts(28, 7), PairCounts(14, 3), 0.5, "drop by 51%"),
        (PairCounts(28, 7), PairCounts(14, 4), 0.5, None),  # exactly half left: allowed
        (PairCounts(28, 7), PairCounts(27, 7), 0.0, "drop by 3%"),  # 0: no drop at all allowed
        (PairCounts(28, 7), PairCounts(1, 1), 1.0, None),  # 1: any drop allowed, never to nothing
        (PairCounts(0, 0), PairCounts(3, 1), 0.5, None),  # growing from an empty zone
        (None, PairCounts(3, 1), 0.5, None),
        (PairCounts(10, 2), PairCounts(100, 20), 0.5, None),
    ],
)
def test_refusal(previous, new, fraction, refused):
    reason = refresh_refusal(previous, new, fraction)
    assert (reason is None) if refused is None else (refused in reason)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_a_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(ValueError, match=r"max_drop_fraction must be in \[0, 1\]"):
        refresh_refusal(None, PairCounts(1, 1), fraction)
