"""Business rules over a scored candidate list: seen-item and exclude filters, dedupe, top-k."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cascade.core.arrays import isin
from cascade.rerank.config import RerankConfig


@dataclass(frozen=True)
class RerankResult:
    items: np.ndarray  # (k,) item indices, best first
    scores: np.ndarray  # (k,)
    positions: np.ndarray  # (k,) row of each kept item in the input, to carry per-candidate metadata


class Reranker:
    def __init__(self, config: RerankConfig):
        self.config = config

    def apply(
        self, items: np.ndarray, scores: np.ndarray, seen: np.ndarray, exclude: np.ndarray, k: int
    ) -> RerankResult:
        """items, scores: (C,). Drops seen (if configured), excluded, padding (0) and repeated items,
        keeping each item's best score; returns at most k, sorted by score descending (ties: item index)."""
        items = np.asarray(items, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        keep = items > 0
        if self.config.filter_seen and len(seen):
            keep &= ~isin(items, seen)
        if len(exclude):
            keep &= ~isin(items, exclude)
        rows = np.flatnonzero(keep)
        # best score first, then lowest item index: deterministic order on ties
        rows = rows[np.lexsort((items[rows], -scores[rows]))]
        _, first = np.unique(items[rows], return_index=True)
        rows = rows[np.sort(first)][:k]
        return RerankResult(items=items[rows], scores=scores[rows], positions=rows)
