"""A small seeded recall problem with a held-out window, and a model's recall of it."""

from __future__ import annotations

import numpy as np

from cascade.core.schema import FeatureSchema
from cascade.data.split import temporal_split
from cascade.data.synthetic import generate
from cascade.recall.training import InteractionSequences, embed_items, embed_users

HISTORY = 10


def held_out_problem():
    data = generate(num_users=250, num_items=300, num_interactions=12_000, seed=5)
    schema = FeatureSchema.fit(data.users, data.items, max_genres=4, title_length=6)
    split = temporal_split(data.interactions, 0.2)
    train = split.train
    seq = InteractionSequences(
        schema.user_index(train["user_id"]),
        schema.item_index(train["item_id"]),
        train["timestamp"].to_numpy(),
    )
    return data, schema, split, seq


def held_out_recall(model, schema, data, split, seq, k: int = 50) -> float:
    positives = {u: schema.item_index(v) for u, v in split.positives(1.0).items()}
    user_ids = np.array(sorted(positives))
    rows = schema.user_index(user_ids)
    items = embed_items(model, schema.item_table(data.items))
    queries = embed_users(model, schema.user_table(data.users), rows, seq.latest_history(rows, HISTORY))
    scores = queries @ items.T
    hits = []
    for user, row, s in zip(user_ids, rows, scores):
        seen = seq.item[seq.user == row]
        s[seen - 1] = -np.inf
        top = np.argsort(-s)[:k] + 1
        hits.append(np.isin(positives[user], top).mean())
    return float(np.mean(hits))
