"""Ranking features for (user, candidate) pairs, built the same way for training and serving."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from cascade.features import FeatureSchema, ItemFeatures

# Bumped whenever a feature's meaning changes, so that rankers trained on the old meaning are retrained
# rather than served.
FEATURES_VERSION = 2

# Recall scores are not comparable across users (each user's query vector differs), so the request-relative
# position and gap to the best candidate carry the recall order into ranking.
DENSE_FEATURES = (
    "recall_score",
    "recall_score_gap",
    "recall_rank",
    "log_popularity",
    "genre_affinity",
    "log_history_length",
)


@dataclass(frozen=True)
class UserRow:
    """Encoded features of the user a request is for (ints, index 0 / unknown codes allowed)."""

    user: int
    gender: int
    age: int
    occupation: int
    zip: int = 0


@dataclass(frozen=True)
class RankingBatch:
    """B (user, candidate) pairs. Categorical arrays are (B,) int64 except ``genres`` (B, G);
    ``dense`` is (B, len(DENSE_FEATURES)) float32."""

    user: np.ndarray
    gender: np.ndarray
    age: np.ndarray
    occupation: np.ndarray
    item: np.ndarray
    genres: np.ndarray
    year: np.ndarray
    dense: np.ndarray

    def __len__(self) -> int:
        return len(self.item)

    def take(self, rows: np.ndarray) -> RankingBatch:
        return RankingBatch(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: torch.from_numpy(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def concat(cls, batches: list[RankingBatch]) -> RankingBatch:
        return cls(**{f.name: np.concatenate([getattr(b, f.name) for b in batches]) for f in fields(cls)})


class RankingFeatureBuilder:
    """Turns a user, their behaviour history and recall candidates into a RankingBatch.

    ``item_popularity`` (num_items,) counts interactions per item index in the window the models were
    trained on, so no statistic peeks at the evaluation window.
    """

    def __init__(self, schema: FeatureSchema, items: ItemFeatures, item_popularity: np.ndarray):
        self.schema = schema
        self.items = items
        self._log_popularity = (np.log1p(item_popularity) / np.log1p(max(item_popularity.max(), 1))).astype(
            np.float32
        )

    def genre_share(self, history: np.ndarray) -> np.ndarray:
        """Share of each genre id among the genres of the history items -> (num_genres,), [0] = 0."""
        genres = self.items.genres[history].ravel()
        counts = np.bincount(genres[genres > 0], minlength=self.schema.num_genres).astype(np.float32)
        total = counts.sum()
        return counts / total if total > 0 else counts

    def build(
        self, user: UserRow, history: np.ndarray, candidates: np.ndarray, recall_scores: np.ndarray
    ) -> RankingBatch:
        """history: item indices (H,); candidates, recall_scores: (C,) in recall order -> C rows."""
        count = len(candidates)
        recall_scores = np.asarray(recall_scores, dtype=np.float32)
        best = recall_scores.max(initial=0.0) if count else 0.0
        genres = self.items.genres[candidates]
        affinity = self.genre_share(history)[genres].sum(axis=1)
        dense = np.column_stack(
            [
                recall_scores,
                recall_scores - best,
                # fixed scale (log1p(1000) ~ 6.9), not the list length, so a longer list moves no one
                np.log1p(np.arange(count, dtype=np.float32)) / 7.0,
                self._log_popularity[candidates],
                affinity,
                np.full(count, np.log1p(len(history)) / 5.0, dtype=np.float32),
            ]
        ).astype(np.float32)
        return RankingBatch(
            user=np.full(count, user.user, dtype=np.int64),
            gender=np.full(count, user.gender, dtype=np.int64),
            age=np.full(count, user.age, dtype=np.int64),
            occupation=np.full(count, user.occupation, dtype=np.int64),
            item=np.asarray(candidates, dtype=np.int64),
            genres=genres,
            year=self.items.year[candidates],
            dense=dense,
        )
