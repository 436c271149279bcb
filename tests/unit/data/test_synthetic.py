from __future__ import annotations

import numpy as np
import pandas as pd

from cascade.data.synthetic import generate


def test_seeded_and_shaped_like_movielens():
    a = generate(num_users=300, num_items=500, num_interactions=10_000, seed=11)
    b = generate(num_users=300, num_items=500, num_interactions=10_000, seed=11)
    c = generate(num_users=300, num_items=500, num_interactions=10_000, seed=12)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    assert not a.interactions.equals(c.interactions)
    assert len(a.users) == 300 and len(a.items) == 500
    assert 8_000 <= len(a.interactions) <= 12_000
    assert not a.interactions.duplicated(["user_id", "item_id"]).any()
    assert set(a.users["gender"]) <= {"F", "M"}
    assert a.interactions["rating"].between(1, 5).all()
    assert (a.items["genres"] != "").all() and a.items["title"].str.match(r".+ \(\d{4}\)$").all()


def test_popularity_is_heavy_tailed_and_taste_is_learnable():
    ds = generate(num_users=2000, num_items=2000, num_interactions=60_000, seed=5)
    counts = np.sort(ds.interactions["item_id"].value_counts().to_numpy())[::-1]
    top_share = counts[: len(counts) // 100].sum() / counts.sum()
    assert top_share > 0.05  # the top 1% of items take far more than 1% of interactions

    # a user's genres repeat: half of a user's interactions predict the genres of the other half
    genres = ds.items.set_index("item_id")["genres"].str.split("|")
    hits, base = [], []
    all_genre_share = pd.Series([g for gs in genres for g in gs]).value_counts(normalize=True)
    for _, group in ds.interactions.groupby("user_id"):
        items = group["item_id"].to_numpy()
        if len(items) < 10:
            continue
        first, second = items[: len(items) // 2], items[len(items) // 2 :]
        liked = {g for i in first for g in genres[i]}
        hits.append(np.mean([bool(set(genres[i]) & liked) for i in second]))
        base.append(all_genre_share[list(liked)].sum())
    assert np.mean(hits) > np.mean(base) + 0.05
