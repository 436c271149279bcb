"""The item-item recall channel: EASE (Steck, 2019), for catalogues small enough to hold an item x item
matrix.

EASE learns B (N, N) with a zero diagonal minimising ||X - X B||^2 + l2 ||B||^2 over the binary user x item
matrix X, in closed form: P = (X^T X + l2 I)^-1, B = -P / diag(P) off the diagonal. A user's scores are the
sum of B's rows of every item they have (their seen set), so the channel costs O(|seen| x N) per request
and B costs N^2 floats in every serving process: ``recall.item_item_max_items`` bounds N (at 5,000 items B
is 100 MB), and above it the channel is not built.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cascade.core.schema import ITEM_ITEM
from cascade.core.sparse import interaction_matrix
from cascade.recall.channels import ChannelCandidates


def ease_weights(matrix: sp.csr_matrix, l2: float) -> np.ndarray:
    """EASE's B (N, N) float32 for the binary user x item ``matrix`` (U, N)."""
    matrix = matrix.tocsr().astype(np.float64)
    gram = (matrix.T @ matrix).toarray()
    gram[np.diag_indices(gram.shape[0])] += l2
    inverse = np.linalg.inv(gram)
    weights = inverse / -np.diag(inverse)
    weights[np.diag_indices(gram.shape[0])] = 0.0
    return weights.astype(np.float32)


class ItemItemChannel:
    """EASE weights over item indices (row and column 0, padding, stay zero)."""

    FILE = "item_item_ease.npy"

    def __init__(self, weights: np.ndarray):
        if weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
            raise ValueError(f"item-item weights must be square, got {weights.shape}")
        self.weights = weights

    @property
    def num_items(self) -> int:
        return self.weights.shape[0]

    @classmethod
    def fit(
        cls, user_rows: np.ndarray, item_rows: np.ndarray, shape: tuple[int, int], l2: float
    ) -> ItemItemChannel:
        """From interactions as aligned (N,) user-table rows and item indices, ``shape`` (users, items)."""
        weights = ease_weights(interaction_matrix(user_rows, item_rows, shape), l2)
        weights[0, :] = weights[:, 0] = 0.0
        return cls(weights)

    def scores(self, seen: np.ndarray) -> np.ndarray:
        """Every item's score for a user who has ``seen`` (S,) item indices -> (N,) float32."""
        seen = seen[(seen > 0) & (seen < self.num_items)]
        return self.weights[seen].sum(axis=0)

    def candidates(self, seen: np.ndarray, blocked: np.ndarray, count: int) -> ChannelCandidates:
        """The ``count`` best-scored items for a user who has ``seen`` items, ``blocked`` and padding
        removed; nothing for a user with no items."""
        if count <= 0 or not len(seen):
            return ChannelCandidates.empty(ITEM_ITEM)
        scores = self.scores(seen)
        scores[0] = -np.inf
        blocked = blocked[(blocked >= 0) & (blocked < self.num_items)]
        scores[blocked] = -np.inf
        count = min(count, self.num_items - 1)
        top = np.argpartition(-scores, count - 1)[:count]
        top = top[np.argsort(-scores[top], kind="stable")]
        top = top[np.isfinite(scores[top])]
        return ChannelCandidates(top.astype(np.int64), scores[top].astype(np.float32), ITEM_ITEM)

    def save(self, folder: Path) -> None:
        with open(folder / self.FILE, "wb") as fh:
            np.save(fh, self.weights, allow_pickle=False)

    @classmethod
    def load(cls, folder: Path) -> ItemItemChannel | None:
        """The channel saved in ``folder``; None when none was built (a catalogue above the size limit, or
        an artifact from before the channel existed)."""
        path = folder / cls.FILE
        if not path.exists():
            return None
        return cls(np.load(path, allow_pickle=False))
