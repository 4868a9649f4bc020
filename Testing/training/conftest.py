"""Fixtures shared by the training tests."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def fixed_predictions():
    """60 cases, 32 % positive (the paper's imbalance), informative but imperfect scores."""
    rng = np.random.default_rng(7)
    y = (rng.random(60) < 0.32).astype(int)
    y[:2] = [0, 1]
    p = np.clip(0.35 + 0.25 * y + rng.normal(0, 0.18, size=60), 0, 1)
    return y, p
