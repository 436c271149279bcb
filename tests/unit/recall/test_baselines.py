"""The ALS recall baseline."""

from __future__ import annotations

import numpy as np

from cascade.core.schema import FeatureSchema
from cascade.data.split import temporal_split
from cascade.data.synthetic import generate
from cascade.recall.baselines import ALSParams, ALSRecommender, interaction_matrix


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
