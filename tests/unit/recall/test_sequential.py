"""The SASRec sequential baseline."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.recall.sequential import SASREC_MAX_ITEMS, SASRecParams, SASRecRecommender, _windows


def test_windows_cut_each_users_sequence_from_the_latest_backwards():
    user = np.array([1, 1, 1, 1, 1, 2, 2])
    item = np.array([5, 6, 7, 8, 9, 3, 4])
    windows = _windows(user, item, length=3)
    assert windows.tolist() == [[6, 7, 8, 9], [0, 0, 5, 6], [0, 0, 3, 4]]


def test_sasrec_learns_what_comes_next_and_never_recommends_seen_items():
    """Every user walks the catalogue in steps of one from a random start: the next item is always the
    latest plus one, which only the order of the sequence tells."""
    rng = np.random.default_rng(0)
    num_items, users, length = 40, 120, 12
    user_col, item_col = [], []
    for u in range(1, users + 1):
        start = int(rng.integers(1, num_items - length))
        user_col += [u] * length
        item_col += list(range(start, start + length))
    user, item = np.array(user_col), np.array(item_col)
    params = SASRecParams(
        dim=32, blocks=1, heads=1, dropout=0.0, max_length=8, epochs=60, batch_size=32, learning_rate=5e-3
    )
    model = SASRecRecommender(params, seed=0).fit(user, item, users + 1, num_items)
    rows = np.arange(1, users + 1)
    found = model.recommend(rows, 3)
    latest = item.reshape(users, length)[:, -1]
    assert np.mean(found[:, 0] == latest + 1) > 0.9
    seen = item.reshape(users, length)
    assert not any(np.isin(f, s).any() for f, s in zip(found, seen))


def test_sasrec_refuses_a_catalogue_above_its_size_limit():
    with pytest.raises(ValueError, match="limit"):
        SASRecRecommender(SASRecParams(), 0).fit(np.array([1]), np.array([1]), 2, SASREC_MAX_ITEMS + 1)
