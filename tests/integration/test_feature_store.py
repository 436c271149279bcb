"""The Redis feature store against a real redis-server."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from cascade.serving.feature_store import HistoryEvent, keys
from cascade.serving.feature_store.redis_store import RedisFeatureStore


def test_key_schema_golden_bytes():
    assert keys.profile_key(42) == b"cascade:v1:{u:42}:profile"
    assert keys.history_key(42) == b"cascade:v1:{u:42}:history"
    assert keys.seen_key(42) == b"cascade:v1:{u:42}:seen"
    assert keys.LOAD_MARKER_KEY == b"cascade:v1:meta:load"
    assert keys.encode_history_entry(7, 2, 1700000000) == b"7:2:1700000000"
    decoded = keys.decode_history_entries([b"7:2:1700000000", b"12:1:5"])
    assert decoded.dtype == np.int64 and decoded.tolist() == [[7, 2, 1700000000], [12, 1, 5]]
    assert keys.decode_history_entries([]).shape == (0, 3)
    for malformed in ([b"7:2"], [b"7:2:1:4"], [b"7:x:1"]):
        with pytest.raises(ValueError):
            keys.decode_history_entries(malformed)


def _load(store):
    users = pd.DataFrame(
        {
            "user_id": [1, 2],
            "gender": ["F", "M"],
            "age": [30, 40],
            "occupation": ["writer", ""],
            "zip_code": ["1", "2"],
        }
    )
    interactions = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 3],
            "item_id": [10, 11, 12, 10],
            "rating": [5, 4, 3, 1],
            "timestamp": [1, 3, 2, 5],
        }
    )
    store.bulk_load(users, interactions, history_length=2, marker="m1")


def test_bulk_load_then_read_in_one_round_trip(redis_client):
    store = RedisFeatureStore(redis_client)
    assert store.loaded_marker() is None
    _load(store)
    assert store.loaded_marker() == "m1"
    state = store.get_user_state(1, history_length=10)
    assert state.features == {"gender": "F", "age": "30", "occupation": "writer", "zip_code": "1"}
    assert state.history_items.tolist() == [11, 12]  # most recent first, trimmed to 2
    assert state.history.shape == (2, 3) and state.history.dtype == np.int64
    assert sorted(state.seen.tolist()) == [10, 11, 12] and state.seen.dtype == np.int64
    no_profile = store.get_user_state(3, history_length=10)  # interactions but no profile row
    assert no_profile.features is None and no_profile.seen.tolist() == [10]
    unknown = store.get_user_state(99, history_length=10)
    assert unknown.features is None and unknown.history.shape == (0, 3) and len(unknown.seen) == 0


def test_record_event_is_atomic_and_trims(redis_client):
    store = RedisFeatureStore(redis_client)
    _load(store)
    length = store.record_event(1, HistoryEvent(13, 1, 100), history_length=2)
    assert length == 2
    state = store.get_user_state(1, history_length=10)
    assert state.history_items.tolist() == [13, 11]
    assert state.history[0].tolist() == [13, 1, 100]
    assert 13 in state.seen.tolist()

    # concurrent writers: every event lands in both the history and the seen set
    def write(start):
        for i in range(start, start + 50):
            store.record_event(7, HistoryEvent(i, 1, i), history_length=1000)

    threads = [threading.Thread(target=write, args=(s,)) for s in (0, 1000, 2000, 3000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = store.get_user_state(7, history_length=1000)
    assert len(state.history) == 200 and len(state.seen) == 200
    assert sorted(state.seen.tolist()) == sorted(state.history_items.tolist())


def test_profile_cache_expires_but_history_is_always_fresh(redis_client):
    store = RedisFeatureStore(redis_client, cache_size=10, cache_ttl_s=60)
    _load(store)
    store.get_user_state(1, history_length=10)
    redis_client.hset(keys.profile_key(1), "occupation", "artist")
    store.record_event(1, HistoryEvent(99, 1, 7), history_length=10)
    state = store.get_user_state(1, history_length=10)
    assert state.features["occupation"] == "writer"  # cached profile
    assert state.history_items[0] == 99  # history never cached
    fresh = RedisFeatureStore(redis_client, cache_size=0)
    assert fresh.get_user_state(1, history_length=10).features["occupation"] == "artist"
