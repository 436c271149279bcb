"""Seeded synthetic MovieLens-shaped data at any scale.

Taste is latent: each item belongs to one of ``num_topics`` topics that fix its likely genres and title
words; each user mixes a few topics, with a prior that depends on their demographic group. An interaction
picks a topic from the user's mixture, then an item of that topic by power-law popularity. Ratings are
higher when the item's topic is strong in the user's mixture. Everything is vectorised and chunked, so
1M items and 10M interactions fit comfortably in memory.
"""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd

from cascade.data.dataset import Dataset
from cascade.data.movielens import ML1M_OCCUPATIONS, ML100K_GENRES

_AGES = np.array([1, 18, 25, 35, 45, 50, 56])
_SYLLABLES = ("ka", "lo", "mi", "ra", "ne", "to", "su", "vi", "da", "pe", "zo", "ri", "ba", "ku", "fe")


def _word_list(rng: np.random.Generator, count: int) -> np.ndarray:
    parts = rng.choice(len(_SYLLABLES), size=(count, 3))
    words = {"".join(_SYLLABLES[i] for i in row) for row in parts}
    words |= {"".join(_SYLLABLES[i] for i in row[:2]) for row in parts}
    return np.array(sorted(words), dtype=object)


def string_item_ids(count: int) -> np.ndarray:
    """SKU-like ids with the characters that break naive parsers: a colon, a slash, a space, braces and
    non-ASCII letters; none is a number, and their sorted order is not their numeric one."""
    return np.array(
        [f"sku:{(i * 2654435761) % 2**32:08x}/{{ü}} {i}" for i in range(1, count + 1)], dtype=object
    )


def string_user_ids(count: int) -> np.ndarray:
    """UUID-shaped user ids, the same for the same count."""
    return np.array(
        [str(uuid.UUID(int=(i * 0x9E3779B97F4A7C15F39CC0605CEDC835) % 2**128)) for i in range(1, count + 1)],
        dtype=object,
    )


def generate(
    num_users: int = 1000,
    num_items: int = 2000,
    num_interactions: int = 50_000,
    seed: int = 0,
    num_topics: int = 20,
    popularity_exponent: float = 1.1,
    name: str = "synthetic",
    min_interactions: int = 5,
    string_ids: bool = False,
) -> Dataset:
    """``string_ids``: opaque string ids, as a shop's catalogue has (``string_user_ids``,
    ``string_item_ids``), instead of 1..N; everything else is the same data set."""
    if min(num_users, num_items, num_interactions, num_topics, min_interactions) <= 0:
        raise ValueError("sizes must be positive")
    rng = np.random.default_rng(seed)
    genres = np.array(ML100K_GENRES[1:], dtype=object)

    # Items: topic, popularity rank within topic, genres and title words from the topic.
    item_topic = rng.integers(0, num_topics, size=num_items)
    topic_genres = np.stack([rng.choice(len(genres), size=3, replace=False) for _ in range(num_topics)])
    words = _word_list(rng, 400)
    topic_words = rng.choice(len(words), size=(num_topics, 12))
    genre_pick = topic_genres[item_topic][:, :2].copy()
    genre_pick[:, 1] = np.where(rng.random(num_items) < 0.5, genre_pick[:, 1], -1)
    noise_genre = rng.integers(0, len(genres), size=num_items)
    genre_pick = np.column_stack([genre_pick, np.where(rng.random(num_items) < 0.2, noise_genre, -1)])
    title_idx = np.where(
        rng.random((num_items, 3)) < 0.7,
        topic_words[item_topic[:, None], rng.integers(0, 12, size=(num_items, 3))],
        rng.integers(0, len(words), size=(num_items, 3)),
    )
    years = rng.integers(1930, 2024, size=num_items)
    item_ids = np.arange(1, num_items + 1, dtype=np.int64)
    if string_ids:
        item_ids = string_item_ids(num_items)
    items = pd.DataFrame(
        {
            "item_id": item_ids,
            "title": [f"{' '.join(words[r]).title()} ({y})" for r, y in zip(title_idx, years)],
            "genres": ["|".join(dict.fromkeys(genres[g] for g in row if g >= 0)) for row in genre_pick],
            "year": years,
        }
    )

    # Users: demographics, and a topic mixture whose prior depends on the (gender, age) group.
    gender = rng.choice(np.array(["F", "M"], dtype=object), size=num_users, p=[0.3, 0.7])
    age = rng.choice(_AGES, size=num_users, p=[0.04, 0.18, 0.35, 0.2, 0.09, 0.08, 0.06])
    occupation = rng.choice(np.array(ML1M_OCCUPATIONS, dtype=object), size=num_users)
    group = (gender == "M").astype(int) * len(_AGES) + np.searchsorted(_AGES, age)
    group_prior = rng.dirichlet(np.full(num_topics, 0.3), size=2 * len(_AGES))
    concentration = 0.5 * num_topics * group_prior[group] + 0.05
    user_mix = np.stack([rng.dirichlet(c) for c in concentration])
    user_ids = np.arange(1, num_users + 1, dtype=np.int64)
    if string_ids:
        user_ids = string_user_ids(num_users)
    users = pd.DataFrame(
        {
            "user_id": user_ids,
            "gender": gender,
            "age": age,
            "occupation": occupation,
            "zip_code": [f"{z:05d}" for z in rng.integers(0, 100_000, size=num_users)],
        }
    )

    # Items grouped by topic, each topic with its own power-law popularity CDF.
    order = np.argsort(item_topic, kind="stable")
    topic_start = np.searchsorted(item_topic[order], np.arange(num_topics + 1))
    popularity = rng.permutation(num_items).astype(np.float64) + 1.0
    weight = popularity[order] ** -popularity_exponent
    cdfs = []
    for t in range(num_topics):
        w = weight[topic_start[t] : topic_start[t + 1]]
        cdfs.append(np.cumsum(w) / w.sum() if len(w) else np.zeros(0))

    # Interactions per user: heavy-tailed counts, at least ``min_interactions`` each (so the total can
    # exceed ``num_interactions``), at most half the catalogue.
    activity = rng.pareto(1.5, size=num_users) + 1.0
    target = np.maximum(min_interactions, np.round(activity / activity.sum() * num_interactions)).astype(
        np.int64
    )
    target = np.minimum(target, max(num_items // 2, 1))
    mix_cdf = np.cumsum(user_mix, axis=1)

    def draw_items(user_rows: np.ndarray) -> np.ndarray:
        """One item per entry of ``user_rows`` (0-based users): topic from the mixture, then popularity."""
        topics = np.empty(len(user_rows), dtype=np.int64)
        chunk = 1_000_000
        for start in range(0, len(user_rows), chunk):
            u = user_rows[start : start + chunk]
            topics[start : start + chunk] = np.minimum(
                (mix_cdf[u] < rng.random(len(u))[:, None]).sum(axis=1), num_topics - 1
            )
        picked = np.empty(len(user_rows), dtype=np.int64)
        for t in range(num_topics):
            rows = np.flatnonzero(topics == t)
            if len(rows) == 0:
                continue
            if len(cdfs[t]) == 0:
                picked[rows] = rng.integers(0, num_items, size=len(rows))
                continue
            picks = np.minimum(np.searchsorted(cdfs[t], rng.random(len(rows))), len(cdfs[t]) - 1)
            picked[rows] = order[topic_start[t] + picks]
        return picked

    # One interaction per (user, item), like MovieLens: draw, drop repeats, and draw again for the
    # shortfall, a few rounds, so heavy users still reach (about) their target.
    users_col = np.zeros(0, dtype=np.int64)
    item_col = np.zeros(0, dtype=np.int64)
    deficit = target.copy()
    for _ in range(8):
        if deficit.sum() <= 0:
            break
        new_users = np.repeat(np.arange(num_users), np.ceil(deficit * 1.2).astype(np.int64))
        users_col = np.concatenate([users_col, new_users])
        item_col = np.concatenate([item_col, draw_items(new_users)])
        _, first = np.unique(users_col * np.int64(num_items) + item_col, return_index=True)
        first.sort()
        users_col, item_col = users_col[first], item_col[first]
        have = np.bincount(users_col, minlength=num_users)
        deficit = np.maximum(target - have, 0)
    # trim users that overshot, keeping draw order
    rank = np.empty(len(users_col), dtype=np.int64)
    by_user = np.argsort(users_col, kind="stable")
    starts = np.searchsorted(users_col[by_user], np.arange(num_users))
    rank[by_user] = np.arange(len(users_col)) - np.repeat(starts, np.bincount(users_col, minlength=num_users))
    keep = rank < target[users_col]
    users_col, item_col, rank = users_col[keep], item_col[keep], rank[keep]

    affinity = user_mix[users_col, item_topic[item_col]]
    rating = np.clip(np.round(2.5 + 8.0 * affinity + rng.normal(0, 0.8, size=len(users_col))), 1, 5)
    # each user's interactions spread over 30 days, in draw order
    start_ts = rng.integers(880_000_000, 1_000_000_000, size=num_users)
    spacing = 30 * 86_400 // np.maximum(target[users_col], 1)
    timestamp = start_ts[users_col] + rank * spacing + rng.integers(0, np.maximum(spacing, 1))
    interactions = pd.DataFrame(
        {
            "user_id": user_ids[users_col],
            "item_id": item_ids[item_col],
            "rating": rating.astype(np.float32),
            "timestamp": timestamp,
        }
    )
    return Dataset.create(name, interactions, users, items)
