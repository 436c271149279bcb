"""Classic recall baselines evaluated beside the two-tower model: implicit ALS, EASE and item-kNN.

* ALS (Hu, Koren & Volinsky, 2008) from the ``implicit`` package factorises the user x item interaction
  matrix with confidence 1 + alpha * r.
* EASE (Steck, 2019): a closed-form item-item model, B = I - P / diag(P) with P = (X^T X + lambda I)^-1 and
  diag(B) = 0; a user's scores are their interaction row times B. One dense item x item inverse, so it is
  limited to catalogues of at most ``EASE_MAX_ITEMS`` items.
* Item-kNN: each item's ``neighbours`` most cosine-similar items (binary columns, with a shrinkage term);
  a user's scores sum the similarities of their items' neighbours.

Each is tuned on the validation split by a small grid (``tune``), then refitted on the whole training
part, exactly as the two-tower model is. All recommend over user-table rows x item indices, never an item
the user already has.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from cascade.core.sparse import interaction_matrix
from cascade.recall.item_item import ease_weights

__all__ = [
    "EASE_MAX_ITEMS",
    "ALSParams",
    "ALSRecommender",
    "EASEParams",
    "EASERecommender",
    "ItemKNNParams",
    "ItemKNNRecommender",
    "interaction_matrix",
    "tune",
]

logger = logging.getLogger(__name__)

# the (N, N) float32 Gram matrix and its inverse: 3.2 GB at this size
EASE_MAX_ITEMS = 20_000
_USER_CHUNK = 1024  # users scored at once: a (chunk, N) dense block


class Recommender(Protocol):
    """Anything fitted that ranks unseen items for user-table rows -> (U, k) item indices, best first."""

    def recommend(self, user_rows: np.ndarray, k: int) -> np.ndarray: ...


def top_unseen(scores: np.ndarray, seen: sp.csr_matrix, k: int) -> np.ndarray:
    """Best ``k`` item indices per row of ``scores`` (U, N), skipping padding (column 0) and each row's
    ``seen`` (U, N) items -> (U, k), best first; 0 pads where fewer remain."""
    scores = np.array(scores, dtype=np.float32, copy=True)
    scores[:, 0] = -np.inf
    rows, cols = seen.nonzero()
    scores[rows, cols] = -np.inf
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    top, top_scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)
    return np.where(np.isfinite(top_scores), top, 0)


class _RowScoringRecommender:
    """Shared by the item-item models: fit keeps the training matrix, recommend scores users in chunks."""

    def __init__(self) -> None:
        self._matrix: sp.csr_matrix | None = None

    def _scores(self, rows: sp.csr_matrix) -> np.ndarray:
        raise NotImplementedError

    def recommend(self, user_rows: np.ndarray, k: int) -> np.ndarray:
        """Top-k unseen item indices per user row -> (U, k); 0 pads where fewer are available."""
        if self._matrix is None:
            raise RuntimeError("fit before recommend")
        user_rows = np.asarray(user_rows, dtype=np.int64)
        out = [
            top_unseen(self._scores(self._matrix[chunk]), self._matrix[chunk], k)
            for chunk in np.array_split(user_rows, max(1, -(-len(user_rows) // _USER_CHUNK)))
        ]
        return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


@dataclass(frozen=True)
class EASEParams:
    l2: float


class EASERecommender(_RowScoringRecommender):
    """EASE over binary interactions; ``params.l2`` is lambda."""

    def __init__(self, params: EASEParams, seed: int = 0):
        super().__init__()
        self.params = params
        self.weights: np.ndarray | None = None  # B (N, N) float32, zero diagonal

    def fit(self, matrix: sp.csr_matrix) -> EASERecommender:
        num_items = matrix.shape[1]
        if num_items > EASE_MAX_ITEMS:
            raise ValueError(
                f"EASE inverts a dense item x item matrix; {num_items} items is above its limit of "
                f"{EASE_MAX_ITEMS}"
            )
        self._matrix = matrix.tocsr().astype(np.float32)
        self.weights = ease_weights(self._matrix, self.params.l2)
        return self

    def _scores(self, rows: sp.csr_matrix) -> np.ndarray:
        return np.asarray(rows @ self.weights)


@dataclass(frozen=True)
class ItemKNNParams:
    neighbours: int
    shrinkage: float = 10.0


class ItemKNNRecommender(_RowScoringRecommender):
    """Item-based collaborative filtering: similarity(i, j) = |U_i & U_j| / (|U_i|^.5 |U_j|^.5 + shrinkage),
    each item keeping its ``neighbours`` most similar items."""

    def __init__(self, params: ItemKNNParams, seed: int = 0, block: int = 2048):
        super().__init__()
        self.params = params
        self.block = block
        self.similarity: sp.csr_matrix | None = None  # (N, N), row i: item i's neighbours

    def fit(self, matrix: sp.csr_matrix) -> ItemKNNRecommender:
        self._matrix = matrix.tocsr().astype(np.float32)
        by_item = self._matrix.T.tocsr()
        norms = np.sqrt(np.asarray(self._matrix.sum(axis=0)).ravel())
        num_items = matrix.shape[1]
        keep = min(self.params.neighbours, max(num_items - 1, 1))
        rows, cols, values = [], [], []
        # a block of items' similarities at a time, so memory stays (block, N) whatever the catalogue
        for start in range(0, num_items, self.block):
            stop = min(start + self.block, num_items)
            overlap = (by_item[start:stop] @ self._matrix).toarray()
            denominator = norms[start:stop, None] * norms[None, :] + self.params.shrinkage
            # an item nobody has overlaps with nothing: 0 / 0 is no similarity
            similarity = overlap / np.maximum(denominator, np.finfo(np.float32).tiny)
            similarity[np.arange(stop - start), np.arange(start, stop)] = 0.0
            best = np.argpartition(-similarity, keep - 1, axis=1)[:, :keep]
            best_values = np.take_along_axis(similarity, best, axis=1)
            nonzero = best_values > 0
            rows.append(np.repeat(np.arange(start, stop), keep)[nonzero.ravel()])
            cols.append(best[nonzero])
            values.append(best_values[nonzero])
        self.similarity = sp.csr_matrix(
            (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
            shape=(num_items, num_items),
            dtype=np.float32,
        )
        return self

    def _scores(self, rows: sp.csr_matrix) -> np.ndarray:
        return (rows @ self.similarity).toarray()


@dataclass(frozen=True)
class ALSParams:
    factors: int
    regularization: float
    alpha: float
    iterations: int = 15


class ALSRecommender:
    """Implicit-feedback ALS over user-table rows x item indices."""

    def __init__(self, params: ALSParams, seed: int):
        from implicit.cpu.als import AlternatingLeastSquares

        self.params = params
        with threadpool_limits(1, "blas"):
            self._model = AlternatingLeastSquares(
                factors=params.factors,
                regularization=params.regularization,
                alpha=params.alpha,
                iterations=params.iterations,
                random_state=seed,
                calculate_training_loss=False,
            )
        self._matrix: sp.csr_matrix | None = None

    def fit(self, matrix: sp.csr_matrix) -> ALSRecommender:
        self._matrix = matrix.tocsr()
        # implicit parallelises itself; BLAS threads inside its loops only oversubscribe the cores
        with threadpool_limits(1, "blas"):
            self._model.fit(self._matrix, show_progress=False)
        return self

    def recommend(self, user_rows: np.ndarray, k: int) -> np.ndarray:
        """Top-k unseen item indices per user row -> (U, k); 0 pads where fewer are available."""
        if self._matrix is None:
            raise RuntimeError("fit before recommend")
        items, _ = self._model.recommend(
            user_rows, self._matrix[user_rows], N=k, filter_already_liked_items=True
        )
        return np.where(items >= 0, items, 0)


def tune(
    build: Callable[..., EASERecommender | ItemKNNRecommender | ALSRecommender],
    grid: Mapping[str, list],
    train_matrix: sp.csr_matrix,
    score: Callable[[Recommender], float],
) -> tuple[dict, dict[str, float]]:
    """Fit ``build(**point)`` for every point of ``grid`` on ``train_matrix``, keep the one ``score``
    (higher is better) likes most.

    Returns the best point and every point's score keyed by its description."""
    results: dict[str, float] = {}
    best: tuple[float, dict] | None = None
    names = list(grid)
    for values in itertools.product(*(grid[n] for n in names)):
        point = dict(zip(names, values))
        value = score(build(**point).fit(train_matrix))
        label = ",".join(f"{n}={v}" for n, v in point.items())
        results[label] = value
        logger.info("baseline %s: validation %.4f", label, value)
        if best is None or value > best[0]:
            best = (value, point)
    assert best is not None
    return best[1], results
