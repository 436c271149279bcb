"""Classic recall baselines evaluated beside the two-tower model: popularity and implicit ALS.

ALS (Hu, Koren & Volinsky, 2008) from the ``implicit`` package factorises the user x item interaction
matrix with confidence 1 + alpha * r. Its hyperparameters are chosen on the validation split by a small
grid, then it is refitted on the whole training part, exactly as the two-tower model is.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from cascade.core.sparse import interaction_matrix

__all__ = ["ALSParams", "ALSRecommender", "interaction_matrix", "tune_als"]

logger = logging.getLogger(__name__)


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


def tune_als(
    grid: Mapping[str, list],
    train_matrix: sp.csr_matrix,
    score: Callable[[ALSRecommender], float],
    seed: int,
) -> tuple[ALSParams, dict[str, float]]:
    """Fit every grid point on ``train_matrix``, keep the one ``score`` (higher is better) likes most.

    Returns the best parameters and every point's score keyed by its description."""
    results: dict[str, float] = {}
    best: tuple[float, ALSParams] | None = None
    names = list(grid)
    for values in itertools.product(*(grid[n] for n in names)):
        params = ALSParams(**dict(zip(names, values)))
        value = score(ALSRecommender(params, seed).fit(train_matrix))
        results[f"factors={params.factors},reg={params.regularization},alpha={params.alpha}"] = value
        logger.info("ALS %s: validation %.4f", params, value)
        if best is None or value > best[0]:
            best = (value, params)
    assert best is not None
    return best[1], results
