"""Top-K metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cascade.core.metrics import auc, evaluate_rankings, ndcg_at_k, recall_at_k


def test_metrics_against_hand_computed_values():
    ranked = np.array([3, 1, 7, 9])
    assert recall_at_k(ranked, np.array([1, 9, 4]), 2) == pytest.approx(1 / 3)
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(ranked, np.array([1, 4]), 3) == pytest.approx(expected)
    report = evaluate_rankings({1: ranked}, {1: np.array([3]), 2: np.array([5])}, (1,), (1,))
    assert report["recall@1"] == pytest.approx(0.5)  # user 2 has no ranking: counts as a miss
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
