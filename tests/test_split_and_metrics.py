from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cascade.core.metrics import auc, evaluate_rankings, ndcg_at_k, recall_at_k
from cascade.data.split import temporal_split
from cascade.data.synthetic import generate


def test_split_holds_out_each_users_latest_fifth_without_leaks():
    ds = generate(num_users=200, num_items=300, num_interactions=6000, seed=3)
    split = temporal_split(ds.interactions, 0.2)
    assert len(split.train) + len(split.test) == len(ds.interactions)
    counts = ds.interactions.groupby("user_id").size()
    held = split.test.groupby("user_id").size().reindex(counts.index, fill_value=0)
    assert (held == np.floor(counts * 0.2)).all()
    last_train = split.train.groupby("user_id")["timestamp"].max()
    first_test = split.test.groupby("user_id")["timestamp"].min()
    assert (last_train.reindex(first_test.index) <= first_test).all()
    pairs = lambda df: set(zip(df["user_id"], df["item_id"]))  # noqa: E731
    assert not pairs(split.train) & pairs(split.test)


def test_split_ties_are_deterministic_and_positives_need_rating():
    frame = pd.DataFrame(
        {
            "user_id": [1] * 5,
            "item_id": [5, 4, 3, 2, 1],
            "rating": [5, 5, 3, 4, 5],
            "timestamp": [1, 1, 1, 2, 3],
        }
    )
    split = temporal_split(frame, 0.4)
    assert split.test["item_id"].tolist() == [2, 1]
    assert split.positives(4.0)[1].tolist() == [2, 1]
    assert split.positives(5.0)[1].tolist() == [1]


def test_metrics_against_hand_computed_values():
    ranked = np.array([3, 1, 7, 9])
    assert recall_at_k(ranked, np.array([1, 9, 4]), 2) == pytest.approx(1 / 3)
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(ranked, np.array([1, 4]), 3) == pytest.approx(expected)
    report = evaluate_rankings({1: ranked}, {1: np.array([3]), 2: np.array([5])}, (1,), (1,))
    assert report["recall@1"] == pytest.approx(0.5)  # user 2 has no ranking: counts as a miss
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
