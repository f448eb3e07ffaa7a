"""Fixtures of the reporting tests; the fabricated inputs are built in reporting_inputs.py."""

from __future__ import annotations

import pytest
from clipfood_assets_tests.reporting.reporting_inputs import Inputs, make_inputs


@pytest.fixture(scope="module")
def inputs() -> Inputs:
    made = make_inputs()
    lo_better = made.runs["better"].results["comparison_to_baseline"]["text_to_image"]["R@1"]["ci"][0]
    lo_worse = made.runs["worse"].results["comparison_to_baseline"]["text_to_image"]["R@1"]["ci"][0]
    # The fixture is only useful if its CIs fall on both sides of 0.
    assert lo_better > 0 > lo_worse
    return made
