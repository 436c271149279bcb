"""Ranking features: batches, history features, channel codes, item statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cascade.core.schema import FeatureSchema
from cascade.ranking.features import (
    DENSE_FEATURES,
    RankingBatch,
    UserRow,
    encode_channels,
)
from cascade.ranking.statistics import ItemStatistics
from tests.unit.ranking.batches import synthetic_batch


def test_batch_take_and_concat_keep_each_candidate_with_its_request(items):
    rng = np.random.default_rng(3)
    a, b = synthetic_batch(rng, 3, 4, 5, items), synthetic_batch(rng, 2, 4, 5, items)
    both = RankingBatch.concat([a, b])
    assert both.num_requests == 5 and len(both) == 20
    np.testing.assert_array_equal(both.history[both.request[12:]], b.history[b.request])
    picked = both.take(np.array([13, 2, 19]))
    assert picked.num_requests == 3
    np.testing.assert_array_equal(picked.item, both.item[[13, 2, 19]])
    np.testing.assert_array_equal(picked.user[picked.request], both.user[both.request[[13, 2, 19]]])
    np.testing.assert_array_equal(picked.group_sizes(), [1, 1, 1])


def test_history_features_equal_their_definitions():
    from cascade.ranking.features import COOCCURRENCE_DECAY, RankingFeatureBuilder
    from cascade.recall.channels import CooccurrenceRules

    rng = np.random.default_rng(8)
    users = pd.DataFrame({"user_id": [1], "gender": "F", "age": 30, "occupation": "x", "zip_code": "1"})
    catalogue = pd.DataFrame(
        {"item_id": np.arange(1, 41), "title": "t (1990)", "genres": "Drama", "year": 1990}
    )
    schema = FeatureSchema.fit(users, catalogue, max_genres=2, title_length=4, zip_prefix_length=1)
    frame = pd.DataFrame(
        {
            "user_id": np.sort(rng.integers(1, 30, 2000)),
            "item_id": rng.integers(1, 41, 2000),
            "rating": 4.0,
            "timestamp": np.arange(2000) + 1_000_000,
        }
    )
    item = schema.item_index(frame.item_id.to_numpy())
    rules = CooccurrenceRules.mine(
        frame.user_id.to_numpy(),
        item,
        schema.num_items,
        window=2,
        min_support=2,
        min_confidence=0.0,
        neighbours=8,
    )
    vectors = rng.normal(size=(schema.num_items - 1, 6)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    stats = ItemStatistics.from_interactions(schema, frame, positive_min_rating=4, recent_window_days=7)
    builder = RankingFeatureBuilder(schema, schema.item_table(catalogue), stats, 12, vectors, rules)
    history = rng.permutation(np.arange(1, schema.num_items))[:15]  # longer than the 12 the models see
    candidates = np.array([3, 9, 27, 14, 40])
    batch = builder.build(
        UserRow(1, 1, 1, 1), history, candidates, np.ones(5, np.float32), np.ones(5, np.int64)
    )
    dense = {name: batch.dense[:, i] for i, name in enumerate(DENSE_FEATURES)}
    seen = history[:12]
    np.testing.assert_array_equal(batch.history[0], seen)
    for c, candidate in enumerate(candidates.tolist()):
        cos = [float(vectors[candidate - 1] @ vectors[h - 1]) for h in seen]
        conf = [dict(zip(*rules.rules_of(h)[:2])).get(candidate, 0.0) for h in seen]
        supp = [dict(zip(rules.rules_of(h)[0], rules.rules_of(h)[2])).get(candidate, 0) for h in seen]
        expected = {
            "similarity_to_latest": cos[0],
            "max_similarity_latest_10": max(cos[:10]),
            "mean_similarity_latest_5": np.mean(cos[:5]),
            "mean_similarity_history": np.mean(cos),
            "cooccurrence_latest_10": sum(conf[:10]),
            "cooccurrence_history": sum(conf),
            "cooccurrence_decayed": sum(v * COOCCURRENCE_DECAY**j for j, v in enumerate(conf)),
            "cooccurrence_max": max(conf),
            "cooccurrence_log_support_latest_10": sum(np.log1p(supp[:10])),
        }
        for name, value in expected.items():
            assert dense[name][c] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert dense["cooccurrence_history"].any()  # the case is not vacuous
    # serving hands over the vectors it gathered for the recall scores: the same features
    given = builder.build(
        UserRow(1, 1, 1, 1),
        history,
        candidates,
        np.ones(5, np.float32),
        np.ones(5, np.int64),
        None,
        vectors[candidates - 1],
    )
    np.testing.assert_array_equal(given.dense, batch.dense)
    # a user without a history gets zeros, not an error
    cold = builder.build(
        UserRow(1, 1, 1, 1), np.zeros(0, np.int64), candidates, np.ones(5, np.float32), np.ones(5, np.int64)
    )
    assert not cold.dense[:, DENSE_FEATURES.index("similarity_to_latest") :].any()
    # without an item-item model its columns are zeros; with one, its score from the sequence the models
    # see and the candidate's rank by it
    assert not dense["item_item_score"].any() and not dense["item_item_rank"].any()
    # the user's customer value, the same for each of their candidates; 0 when unknown
    assert not dense["user_value"].any()
    valued = builder.build(
        UserRow(1, 1, 1, 1, value=0.6), history, candidates, np.ones(5, np.float32), np.ones(5, np.int64)
    )
    column = DENSE_FEATURES.index("user_value")
    assert valued.dense[:, column].tolist() == pytest.approx([0.6] * 5)
    from cascade.recall.item_item import ItemItemChannel

    ease = ItemItemChannel.fit(
        frame.user_id.to_numpy(), item, (int(frame.user_id.max()) + 1, schema.num_items), l2=10.0
    )
    with_ease = RankingFeatureBuilder(
        schema, schema.item_table(catalogue), stats, 12, vectors, rules, item_item=ease
    ).build(UserRow(1, 1, 1, 1), history, candidates, np.ones(5, np.float32), np.ones(5, np.int64))
    scores = ease.weights[seen].sum(axis=0)[candidates]
    column = DENSE_FEATURES.index("item_item_score")
    np.testing.assert_allclose(with_ease.dense[:, column], scores, rtol=1e-5)
    ranks = np.argsort(np.argsort(-scores, kind="stable"))
    np.testing.assert_allclose(with_ease.dense[:, column + 1], np.log1p(ranks) / 7.0, rtol=1e-5)
    others = [i for i in range(batch.dense.shape[1]) if i not in (column, column + 1)]
    np.testing.assert_array_equal(with_ease.dense[:, others], batch.dense[:, others])


def test_channel_codes():
    np.testing.assert_array_equal(encode_channels(np.array(["two_tower", "cooccurrence", "?"])), [1, 2, 0])


def test_item_statistics_count_only_events_up_to_the_time_asked(tmp_path):
    rng = np.random.default_rng(4)
    day = 86_400
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(1, 20, 400),
            "item_id": rng.integers(1, 15, 400),
            "rating": rng.integers(1, 6, 400).astype(float),
            "timestamp": 1_000_000 + rng.integers(0, 30 * day, 400),
        }
    )
    schema = FeatureSchema.fit(
        pd.DataFrame(
            {"user_id": np.arange(1, 20), "gender": "M", "age": 25, "occupation": "x", "zip_code": "1"}
        ),
        pd.DataFrame({"item_id": np.arange(1, 15), "title": "t (1990)", "genres": "Drama", "year": 1990}),
        max_genres=2,
        title_length=4,
        zip_prefix_length=1,
    )
    stats = ItemStatistics.from_interactions(schema, frame, positive_min_rating=4, recent_window_days=7)
    items = schema.item_index(np.arange(1, 15))
    end = float(frame.timestamp.max())  # the time every served request is clamped to: a cached answer
    for at in (1_000_000 - 5, 1_000_000 + 10 * day + 123, end, 1_000_000 + 40 * day):
        ids = schema.item_id_of(items)
        expected = [((frame.item_id == i) & (frame.timestamp <= at)).sum() for i in ids]
        recent = [
            ((frame.item_id == i) & (frame.timestamp <= at) & (frame.timestamp > at - 7 * day)).sum()
            for i in ids
        ]
        np.testing.assert_array_equal(stats.counts_before(items, at), expected)
        np.testing.assert_array_equal(stats.recent_counts(items, at), recent)
    assert stats.clamp_time(None) == frame.timestamp.max()
    assert stats.clamp_time(frame.timestamp.max() + 99) == frame.timestamp.max()
    stats.save(tmp_path / "s.npz")
    again = ItemStatistics.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(again.event_keys, stats.event_keys)
    assert again.end == stats.end and again.recent_window_days == 7
