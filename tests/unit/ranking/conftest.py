"""Fixtures of the ranking tests."""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.ranking.batches import RandomItems


@pytest.fixture
def items():
    return RandomItems(np.random.default_rng(0))
