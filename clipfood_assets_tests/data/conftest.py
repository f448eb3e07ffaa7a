"""Shared fixtures for the data-layer tests."""

from __future__ import annotations

import pandas as pd
import pytest

from .factories import synthetic_id


@pytest.fixture
def small_pairs() -> pd.DataFrame:
    """Positive pairs over 20 recipes with 1-3 images each, in canonical order."""
    rows = []
    for i in range(20):
        recipe_id = synthetic_id(i)
        for position in range(1 + i % 3):
            rows.append((recipe_id, f"images/dish {i}__{recipe_id}_{position}.jpg", f"Crispy Banana Bread {i}"))
    return pd.DataFrame(rows, columns=["recipe_id", "image_key", "caption"]).sort_values(["recipe_id", "image_key"]).reset_index(drop=True)
