"""The recall baselines: ALS, EASE and item-kNN."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cascade.core.schema import FeatureSchema
from cascade.data.split import temporal_split
from cascade.data.synthetic import generate
from cascade.recall.baselines import (
    EASE_MAX_ITEMS,
    ALSParams,
    ALSRecommender,
    EASEParams,
    EASERecommender,
    ItemKNNParams,
    ItemKNNRecommender,
    interaction_matrix,
    tune,
)


def test_als_baseline_beats_popularity_on_held_out_interactions():
    data = generate(num_users=300, num_items=400, num_interactions=20_000, seed=5)
    schema = FeatureSchema.fit(data.users, data.items, 3, 4)
    split = temporal_split(data.interactions, 0.2)
    matrix = interaction_matrix(
        schema.user_index(split.train["user_id"]),
        schema.item_index(split.train["item_id"]),
        (schema.num_users, schema.num_items),
    )
    positives = {u: schema.item_index(v) for u, v in split.positives(1.0).items()}
    users = np.array(sorted(positives))
    als = ALSRecommender(ALSParams(factors=16, regularization=0.1, alpha=10.0), seed=0).fit(matrix)
    found = als.recommend(schema.user_index(users), 50)
    popular = np.argsort(-np.asarray(matrix.sum(axis=0)).ravel())
    seen = {u: set(matrix[schema.user_index([u])[0]].indices) for u in users}
    hits_als = np.mean([np.isin(positives[u], f).mean() for u, f in zip(users, found)])
    hits_pop = np.mean(
        [np.isin(positives[u], [i for i in popular if i not in seen[u]][:50]).mean() for u in users]
    )
    assert hits_als > hits_pop
    assert all(not set(f.tolist()) & seen[u] for u, f in zip(users, found))  # seen items filtered


def _small_matrix(seed: int = 1, users: int = 60, items: int = 25) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items)) < 0.25).astype(np.float32)
    dense[:, 0] = 0  # item index 0 is padding
    return sp.csr_matrix(dense)


def test_ease_weights_are_the_constrained_ridge_regression_of_each_item_on_the_others():
    """Column j of B, without its zero diagonal, is the ridge regression of X_j on every other column:
    the closed form solves the constrained problem exactly."""
    matrix, l2 = _small_matrix(), 5.0
    ease = EASERecommender(EASEParams(l2=l2)).fit(matrix)
    dense = matrix.toarray().astype(np.float64)
    for j in (3, 11, 24):
        others = np.delete(np.arange(dense.shape[1]), j)
        a = dense[:, others]
        ridge = np.linalg.solve(a.T @ a + l2 * np.eye(len(others)), a.T @ dense[:, j])
        np.testing.assert_allclose(ease.weights[others, j], ridge, rtol=1e-4, atol=1e-5)
        assert ease.weights[j, j] == 0.0


def test_item_knn_keeps_each_items_most_cosine_similar_items():
    matrix = _small_matrix(2)
    knn = ItemKNNRecommender(ItemKNNParams(neighbours=5, shrinkage=0.0), block=7).fit(matrix)
    dense = matrix.toarray()
    norms = np.sqrt(dense.sum(axis=0))
    cosine = (dense.T @ dense) / np.maximum(np.outer(norms, norms), 1e-12)
    np.fill_diagonal(cosine, 0.0)
    for i in range(1, 25):
        row = knn.similarity[i]
        expected = np.sort(cosine[i])[::-1][:5]
        np.testing.assert_allclose(np.sort(row.data)[::-1], expected[expected > 0], rtol=1e-5)
        np.testing.assert_allclose(row.toarray().ravel()[row.indices], cosine[i, row.indices], rtol=1e-5)


def test_item_item_baselines_beat_popularity_never_recommend_seen_items_and_are_tuned_on_validation():
    data = generate(num_users=300, num_items=400, num_interactions=20_000, seed=5)
    schema = FeatureSchema.fit(data.users, data.items, 3, 4)
    split = temporal_split(data.interactions, 0.2)
    shape = (schema.num_users, schema.num_items)
    matrix = interaction_matrix(
        schema.user_index(split.train["user_id"]), schema.item_index(split.train["item_id"]), shape
    )
    positives = {u: schema.item_index(v) for u, v in split.positives(1.0).items()}
    users = np.array(sorted(positives))
    rows = schema.user_index(users)

    def hit_rate(found: np.ndarray) -> float:
        return float(np.mean([np.isin(positives[u], f).mean() for u, f in zip(users, found)]))

    popular = np.argsort(-np.asarray(matrix.sum(axis=0)).ravel())
    seen = {u: set(matrix[r].indices) for u, r in zip(users, rows)}
    popularity = hit_rate([[i for i in popular if i not in seen[u] and i][:50] for u in users])
    for name, build, grid in (
        ("ease", lambda **p: EASERecommender(EASEParams(**p)), {"l2": [10.0, 100.0, 1000.0]}),
        ("knn", lambda **p: ItemKNNRecommender(ItemKNNParams(**p)), {"neighbours": [10, 100]}),
    ):
        best, scores = tune(build, grid, matrix, lambda m: hit_rate(m.recommend(rows, 50)))
        assert (
            len(scores) == len(grid[next(iter(grid))])
            and max(scores.values()) == scores[",".join(f"{k}={v}" for k, v in best.items())]
        )
        found = build(**best).fit(matrix).recommend(rows, 50)
        assert found.shape == (len(users), 50)
        assert hit_rate(found) > popularity, name
        assert all(not set(f.tolist()) & seen[u] and 0 not in f for u, f in zip(users, found)), name


def test_ease_refuses_a_catalogue_above_its_size_limit():
    too_wide = sp.csr_matrix((2, EASE_MAX_ITEMS + 1), dtype=np.float32)
    with pytest.raises(ValueError, match="limit"):
        EASERecommender(EASEParams(l2=1.0)).fit(too_wide)


def test_the_item_item_channel_serves_what_the_ease_baseline_recommends():
    """The served channel (from a user's seen items) and the evaluated baseline (from their matrix row) are
    one model: the same items, in the same order, never one the user has or padding."""
    from cascade.recall.item_item import ItemItemChannel

    matrix = _small_matrix(3, users=80, items=30)
    rows, cols = matrix.nonzero()
    channel = ItemItemChannel.fit(rows, cols, matrix.shape, l2=20.0)
    baseline = EASERecommender(EASEParams(l2=20.0)).fit(matrix)
    for user in (0, 7, 42):
        seen = matrix[user].indices
        served = channel.candidates(seen, seen, 10)
        assert served.items.tolist() == baseline.recommend(np.array([user]), 10)[0].tolist()
        assert not set(served.items.tolist()) & set(seen.tolist()) and 0 not in served.items
        assert (np.diff(served.scores) <= 0).all()
    nothing = np.array([], dtype=np.int64)
    assert channel.candidates(nothing, nothing, 5).items.size == 0
