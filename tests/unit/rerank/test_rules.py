"""Business rules over the ranked list."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.rerank.config import RerankConfig
from cascade.rerank.rules import Reranker


def test_rerank_filters_dedupes_and_keeps_top_k_by_score():
    reranker = Reranker(RerankConfig())
    items = np.array([5, 3, 9, 3, 7, 0, 2])
    scores = np.array([0.9, 0.2, 0.8, 0.95, 0.7, 1.0, 0.8], dtype=np.float32)
    out = reranker.apply(items, scores, seen=np.array([9]), exclude=np.array([7]), k=3)
    assert out.items.tolist() == [3, 5, 2]  # 9 seen, 7 excluded, 0 padding, 3 kept once at its best
    assert out.scores.tolist() == pytest.approx([0.95, 0.9, 0.8])
    assert items[out.positions].tolist() == out.items.tolist()
    keep_seen = Reranker(RerankConfig(filter_seen=False)).apply(
        items, scores, np.array([9]), np.array([]), 10
    )
    assert 9 in keep_seen.items
