"""The temporal split every evaluation uses."""

from __future__ import annotations

import numpy as np
import pandas as pd

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
