"""Synthetic ranking batches over a small random catalogue, with a planted signal to learn."""

from __future__ import annotations

import numpy as np

from cascade.core.schema import RECALL_CHANNELS
from cascade.ranking.config import RankingConfig
from cascade.ranking.features import (
    RankingBatch,
)
from cascade.ranking.ranker import dense_features_of

NUM_ITEMS, NUM_GENRES, MAX_GENRES = 60, 6, 3


class StubSchema:
    """The cardinalities a ranker reads from a FeatureSchema, for synthetic batches."""

    def cardinality(self, name: str) -> int:
        return {
            "user": 30,
            "item": NUM_ITEMS,
            "gender": 3,
            "age": 8,
            "occupation": 5,
            "zip": 4,
            "genre": NUM_GENRES,
            "year": 10,
        }[name]


class RandomItems:
    def __init__(self, rng):
        self.genres = np.zeros((NUM_ITEMS, MAX_GENRES), dtype=np.int64)
        self.genres[1:, 0] = rng.integers(1, NUM_GENRES, NUM_ITEMS - 1)
        self.genres[1::2, 1] = rng.integers(1, NUM_GENRES, NUM_ITEMS // 2)
        self.year = rng.integers(1, 10, NUM_ITEMS)


# the dense columns rankers built from a default RankingConfig take
DENSE_WIDTH = len(dense_features_of(RankingConfig()))


def synthetic_batch(rng, requests: int, candidates: int, history: int, items: RandomItems) -> RankingBatch:
    """Requests with random users, histories (some padded) and candidates."""
    hist = rng.integers(1, NUM_ITEMS, (requests, history))
    for r in range(requests):
        hist[r, rng.integers(history // 2, history + 1) :] = 0
    cand = rng.integers(1, NUM_ITEMS, requests * candidates)
    return RankingBatch(
        user=rng.integers(1, 30, requests),
        gender=rng.integers(0, 3, requests),
        age=rng.integers(0, 8, requests),
        occupation=rng.integers(0, 5, requests),
        zip=rng.integers(0, 4, requests),
        history=hist,
        request=np.repeat(np.arange(requests), candidates),
        item=cand,
        genres=items.genres[cand],
        year=items.year[cand],
        channel=rng.integers(1, len(RECALL_CHANNELS) + 1, requests * candidates),
        dense=rng.normal(size=(requests * candidates, DENSE_WIDTH)).astype(np.float32),
    )


def planted_labels(batch: RankingBatch, items: RandomItems) -> np.ndarray:
    """Positive when two engineered features are jointly high: a signal every ranker can see."""
    return (batch.dense[:, 0] + 0.5 * batch.dense[:, 1] > 1.0).astype(np.float32)
