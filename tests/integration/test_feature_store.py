"""The Redis feature store against a real redis-server."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest

from cascade.core.privacy import Pseudonymiser
from cascade.customers.config import CustomersConfig
from cascade.serving.feature_store import HistoryEvent, keys
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from tests.helpers import PSEUDONYMS


def test_key_schema_golden_bytes():
    legacy = keys.LEGACY_KEYSPACE  # the layout stores written before keyspaces were switched: tags are ids
    assert legacy.profile_key("42") == b"cascade:v1:{u:42}:profile"
    assert legacy.history_key("42") == b"cascade:v1:{u:42}:history"
    assert legacy.load_marker_key == b"cascade:v1:meta:load"
    assert not legacy.pseudonymised
    current = keys.Keyspace.for_layout(50, PSEUDONYMS.key_id)
    tag = PSEUDONYMS.of(42)
    assert current.pseudonymised and tag == PSEUDONYMS.of("42") and len(tag) == 34 and tag.startswith("p-")
    assert current.history_key(tag) == f"cascade:v2:h50:{{u:{tag}}}:history".encode()
    assert current.event_key(tag, "e") == f"cascade:v2:h50:{{u:{tag}}}:event:e".encode()
    assert current.impressions_key(tag, "c7") == f"cascade:v2:h50:{{u:{tag}}}:shown:c7".encode()
    assert keys.Keyspace.from_pointer(current.to_pointer()) == current
    assert keys.Keyspace.from_pointer(None) == legacy
    assert keys.tag_of_key(current.seen_key(tag)) == tag
    # a v1 key moves to its user's pseudonym, its tail kept
    moved = legacy.moved_key(b"cascade:v1:{u:-7}:event:e-1", current, PSEUDONYMS.of(-7))
    assert moved == f"cascade:v2:h50:{{u:{PSEUDONYMS.of(-7)}}}:event:e-1".encode()
    # an id that is not plain is a token no key or entry can be broken by, and comes back whole
    odd = "sku:9/{ü} 1"
    token = keys.id_token(odd)
    assert token.startswith("~") and not set(token) & set(":{} ") and keys.id_of_token(token) == odd
    assert keys.id_token("~plain") != "~plain" and keys.id_of_token(keys.id_token("~plain")) == "~plain"
    assert keys.tag_of_key(legacy.seen_key(token)) == token
    assert keys.id_token(42) == "42" and keys.id_token("a-b_c.d") == "a-b_c.d"
    assert keys.encode_history_entry(7, 2, 1700000000) == b"7:2:1700000000"
    items, events = keys.decode_history_entries([b"7:2:1700000000", b"12:1:5"])
    assert items.dtype == np.int64 and items.tolist() == [7, 12]
    assert events.dtype == np.int64 and events.tolist() == [[2, 1700000000], [1, 5]]
    items, events = keys.decode_history_entries([keys.encode_history_entry(odd, 3, 9), b"12:1:5"])
    assert items.dtype == object and items.tolist() == [odd, "12"] and events.tolist() == [[3, 9], [1, 5]]
    items, events = keys.decode_history_entries([])
    assert items.shape == (0,) and events.shape == (0, 2)
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


def test_bulk_load_then_read_in_one_round_trip(store_redis):
    store = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS)
    assert store.loaded_marker() is None
    _load(store)
    assert store.loaded_marker() == "m1"
    state = store.get_user_state(1, history_length=10)
    assert state.features == {"gender": "F", "age": "30", "occupation": "writer", "zip_code": "1"}
    assert state.history_items.tolist() == [11, 12]  # most recent first, trimmed to 2
    assert state.history_events.shape == (2, 2) and state.history_events.dtype == np.int64
    assert sorted(state.seen.tolist()) == [10, 11, 12] and state.seen.dtype == np.int64
    no_profile = store.get_user_state(3, history_length=10)  # interactions but no profile row
    assert no_profile.features is None and no_profile.seen.tolist() == [10]
    unknown = store.get_user_state(99, history_length=10)
    assert unknown.features is None and unknown.history_events.shape == (0, 2) and len(unknown.seen) == 0


def test_record_event_is_atomic_and_trims(store_redis):
    store = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS)
    _load(store)
    result = store.record_event(1, HistoryEvent(13, 1, 100), history_length=2)
    assert result.history_length == 2 and not result.duplicate
    state = store.get_user_state(1, history_length=10)
    assert state.history_items.tolist() == [13, 11]
    assert state.history_events[0].tolist() == [1, 100]
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
    assert len(state.history_items) == 200 and len(state.seen) == 200
    assert sorted(state.seen.tolist()) == sorted(state.history_items.tolist())


def test_profile_cache_expires_but_history_is_always_fresh(store_redis):
    store = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS, cache_size=10, cache_ttl_s=60)
    _load(store)
    store.get_user_state(1, history_length=10)
    store_redis.hset(store.keyspace.profile_key(store.tag(1)), "occupation", "artist")
    store.record_event(1, HistoryEvent(99, 1, 7), history_length=10)
    state = store.get_user_state(1, history_length=10)
    assert state.features["occupation"] == "writer"  # cached profile
    assert state.history_items[0] == 99  # history never cached
    fresh = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS, cache_size=0)
    assert fresh.get_user_state(1, history_length=10).features["occupation"] == "artist"


def test_an_event_id_is_recorded_once_and_a_rating_kept(store_redis):
    store = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS)
    _load(store)
    event = HistoryEvent(13, 3, 100, rating=4.5)
    first = store.record_event(1, event, history_length=10, event_id="e-1", dedupe_window_s=60)
    again = store.record_event(1, event, history_length=10, event_id="e-1", dedupe_window_s=60)
    assert not first.duplicate and again.duplicate
    assert first.history_length == again.history_length == 3
    assert store.get_user_state(1, history_length=10).history_items.tolist() == [13, 11, 12]
    assert store.ratings(1)[13] == 4.5
    assert 0 < store_redis.ttl(store.keyspace.event_key(store.tag(1), "e-1")) <= 60
    other = store.record_event(
        1, HistoryEvent(14, 1, 101), history_length=10, event_id="e-2", dedupe_window_s=60
    )
    assert not other.duplicate and other.history_length == 4
    # without an id (or with de-duplication off) every call is an event
    store.record_event(1, HistoryEvent(14, 1, 101), history_length=10)
    store.record_event(1, HistoryEvent(14, 1, 101), history_length=10, event_id="e-2", dedupe_window_s=0)
    assert store.get_user_state(1, history_length=10).history_items.tolist()[:3] == [14, 14, 14]


def test_reloading_merges_and_never_deletes_recorded_events(store_redis):
    store = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS)
    _load(store)  # user 1: 11@3, 12@2 kept of 10@1, 11@3, 12@2 (history length 2)
    store.record_event(1, HistoryEvent(20, 1, 50), history_length=2)  # recorded after the snapshot
    store.record_event(5, HistoryEvent(21, 2, 60), history_length=2)  # a user only seen online
    _load(store)  # the same data set again: nothing changes
    assert store.get_user_state(1, history_length=10).history_items.tolist() == [20, 11]
    users = pd.DataFrame(
        {"user_id": [1], "gender": ["F"], "age": [31], "occupation": ["writer"], "zip_code": ["1"]}
    )
    interactions = pd.DataFrame(
        {"user_id": [1, 1, 1], "item_id": [10, 11, 12], "rating": [5, 4, 3], "timestamp": [1, 3, 2]}
    )
    store.bulk_load(users, interactions, history_length=4, marker="m2")  # a longer history
    state = store.get_user_state(1, history_length=10)
    assert state.history_items.tolist() == [20, 11, 12, 10]  # merged by time, recorded event first
    assert sorted(state.seen.tolist()) == [10, 11, 12, 20]
    assert state.features["age"] == "31"  # profiles follow the data set
    assert store.get_user_state(5, history_length=10).history_items.tolist() == [21]
    assert store.ratings(1) == {10: 5.0, 11: 4.0, 12: 3.0}
    assert store.loaded_marker() == "m2"


def test_one_loader_at_a_time(store_redis):
    store = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS)
    token = store.acquire_load_lock(ttl_s=5)
    assert token is not None and store.acquire_load_lock() is None
    store.release_load_lock("not-the-holder")
    assert store.acquire_load_lock() is None
    store.release_load_lock(token)
    assert store.acquire_load_lock() is not None


def _wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_switching_keyspace_moves_every_user_and_loses_no_event(redis_client):
    """A loader moves users from a store of layout v1 (keys by id) to a pseudonymised keyspace with a longer
    history while a server that has not yet followed the pointer goes on writing to the old one: after the
    catch-up every event is in the new keyspace, the idempotency keys came along, the old keyspace is gone,
    and no key, flag or audit record names a user by id any more."""
    redis_client.set(keys.LEGACY_KEYSPACE.load_marker_key, "m0")  # a store loaded by layout v1
    # the guard's records of layout v1: by id
    redis_client.hset(b"cascade:guard:{u:5}:state", mapping={"state": "flagged", "reason": "r", "by": "ops"})
    redis_client.lpush(b"cascade:guard:{u:5}:quarantine", b"40:3:90|4.0|1.0")
    redis_client.zadd(keys.GUARD_FLAGS_KEY, {"5": 1.0})
    redis_client.xadd(keys.GUARD_AUDIT_KEY, {"action": "flagged", "user": "5", "by": "ops"})
    loader, lagging = (
        RedisFeatureStore(redis_client, pseudonyms=PSEUDONYMS),
        RedisFeatureStore(redis_client, pseudonyms=PSEUDONYMS),
    )
    for store in (loader, lagging):
        store.refresh_keyspace()
    assert loader.keyspace == keys.LEGACY_KEYSPACE
    _load(loader)  # user 1: 11@3, 12@2 (history length 2)
    loader.record_event(
        1, HistoryEvent(20, 3, 50, rating=4.0), history_length=2, event_id="e-1", dedupe_window_s=60
    )
    loader.record_event(5, HistoryEvent(21, 2, 60), history_length=2)  # a user only seen online
    for _ in range(2):
        loader.count_impressions(1, [("campaign-7", 600)])
    target = keys.Keyspace.for_layout(4, PSEUDONYMS.key_id)
    loaded = []

    def load(keyspace):
        users = pd.DataFrame(
            {"user_id": [1], "gender": ["F"], "age": [31], "occupation": ["w"], "zip_code": ["1"]}
        )
        interactions = pd.DataFrame(
            {"user_id": [1, 1, 1], "item_id": [10, 11, 12], "rating": [5, 4, 3], "timestamp": [1, 3, 2]}
        )
        loader.bulk_load(users, interactions, history_length=4, marker="m4", keyspace=keyspace)
        loaded.append(keyspace)

    report = {}
    switching = threading.Thread(
        target=lambda: report.update(loader.switch_keyspace(target, load, settle_s=1.0))
    )
    switching.start()
    _wait_for(lambda: redis_client.get(keys.KEYSPACE_POINTER_KEY) is not None)
    # the lagging server still writes to the old keyspace, after the pointer moved
    lagging.record_event(1, HistoryEvent(30, 1, 70), history_length=2)
    lagging.record_event(6, HistoryEvent(31, 1, 80), history_length=2)
    switching.join(timeout=30)
    assert loaded == [target] and report["users_moved"] == 4 and report["users_caught_up"] == 5
    assert loader.keyspace == target and loader.loaded_marker() == "m4"
    assert not list(redis_client.scan_iter(match=keys.LEGACY_KEYSPACE.user_key_pattern))
    assert redis_client.get(keys.LEGACY_KEYSPACE.load_marker_key) is None

    assert lagging.refresh_keyspace() and lagging.keyspace == target
    state = lagging.get_user_state(1, history_length=10)
    assert state.history_items.tolist() == [30, 20, 11, 12]  # latest 4, by time, of everything recorded
    assert sorted(state.seen.tolist()) == [10, 11, 12, 20, 30]
    assert state.features["age"] == "31"
    assert lagging.ratings(1) == {10: 5.0, 11: 4.0, 12: 3.0, 20: 4.0}
    assert lagging.get_user_state(5, history_length=10).history_items.tolist() == [21]
    assert lagging.get_user_state(6, history_length=10).history_items.tolist() == [31]
    retried = lagging.record_event(
        1, HistoryEvent(20, 3, 50, rating=4.0), history_length=4, event_id="e-1", dedupe_window_s=60
    )
    assert retried.duplicate  # the idempotency key moved with its TTL
    assert 0 < redis_client.ttl(target.event_key(PSEUDONYMS.of(1), "e-1")) <= 60
    assert lagging.impressions(1, ["campaign-7"]) == {"campaign-7": 2}  # and so did pin impressions
    assert 0 < redis_client.ttl(target.impressions_key(PSEUDONYMS.of(1), "campaign-7")) <= 600
    # the guard's records name user 5 by pseudonym now, and still hold them
    (flag,) = lagging.guard_flags(10)
    assert flag.pseudonym == PSEUDONYMS.of(5) and flag.state == "flagged" and flag.quarantined == 1
    ((_, audit),) = redis_client.xrange(keys.GUARD_AUDIT_KEY)
    assert audit[b"user"] == PSEUDONYMS.of(5).encode()
    tags = {keys.tag_of_key(key) for key in redis_client.scan_iter(match=b"*{u:*")}
    assert tags == {PSEUDONYMS.of(user) for user in (1, 2, 3, 5, 6)}


def test_pin_impressions_count_within_a_window_that_the_first_one_opens(store_redis):
    store = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS)
    assert store.impressions(9, ["a", "b"]) == {"a": 0, "b": 0}
    store.count_impressions(9, [("a", 1), ("b", 600)])
    store.count_impressions(9, [("a", 1)])
    assert store.impressions(9, ["a", "b"]) == {"a": 2, "b": 1}
    assert store.impressions(10, ["a"]) == {"a": 0}  # per user
    # later impressions do not push the window's end: it closes a second after the first
    _wait_for(lambda: store.impressions(9, ["a"])["a"] == 0, timeout_s=3.0)
    assert store.impressions(9, ["b"]) == {"b": 1}
    assert 0 < store_redis.ttl(store.keyspace.impressions_key(store.tag(9), "b")) <= 600


def test_a_newer_key_layout_is_not_followed(store_redis, caplog):
    running = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS)
    fresh = keys.Keyspace.for_layout(None, PSEUDONYMS.key_id)
    assert running.keyspace == fresh  # an empty store: this layout's, pointed at for every process
    assert keys.Keyspace.from_pointer(store_redis.get(keys.KEYSPACE_POINTER_KEY)) == fresh
    newer = keys.Keyspace("cascade:v9:h50", keys.KEY_SCHEMA_VERSION + 1, 50)
    store_redis.set(keys.KEYSPACE_POINTER_KEY, newer.to_pointer())
    with caplog.at_level("ERROR", logger="cascade.serving.feature_store.redis_store"):
        assert running.refresh_keyspace() is False and running.keyspace == fresh
        running.ping()  # the probe reads it again: still not followed, and not said again
    assert running.keyspace == fresh and caplog.text.count("not following") == 1
    with pytest.raises(RuntimeError, match="newer"):
        RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS).get_user_state(1, history_length=5)


def test_a_store_keyed_with_another_pseudonym_key_is_refused(store_redis):
    """A process with another key would find no user and write each under a second tag: it refuses."""
    RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS).ping()
    other = RedisFeatureStore(store_redis, pseudonyms=Pseudonymiser(b"another-key-of-16-bytes"))
    with pytest.raises(RuntimeError, match="pseudonym key"):
        other.get_user_state(1, history_length=5)


def test_forgetting_a_user_deletes_every_key_of_theirs_and_no_one_elses(store_redis):
    store = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS)
    _load(store)
    store.record_event(1, HistoryEvent(20, 3, 50, rating=4.0), 2, event_id="e-1", dedupe_window_s=60)
    store.count_impressions(1, [("campaign", 600)])
    store.set_guard_state(1, "flagged", "live", 0.99, "detector")
    store.record_event(1, HistoryEvent(21, 3, 51, rating=5.0), 2)  # quarantined
    before = set(store_redis.scan_iter())
    removed = store.forget_user(1)
    assert removed == {
        "profile": 1, "history": 1, "seen": 1, "ratings": 1, "activity": 1, "guard_state": 1,
        "quarantine": 1, "rate": 0, "flag": 1, "expiring": 2,
    }  # fmt: skip
    left = set(store_redis.scan_iter())
    assert not any(PSEUDONYMS.of(1).encode() in key for key in left)
    # (the flags' set went with its one member)
    assert before - left - {keys.GUARD_FLAGS_KEY} == {
        key for key in before if PSEUDONYMS.of(1).encode() in key
    }
    assert store.get_user_state(2, history_length=2).features is not None  # others are untouched
    state = store.get_user_state(1, history_length=2)
    assert state.features is None and state.history_items.size == 0 and state.seen.size == 0
    assert store.guard_flags(10) == [] and store_redis.zscore(keys.FORGOTTEN_KEY, PSEUDONYMS.of(1))
    assert store.forget_user(1) == dict.fromkeys(removed, 0)  # again: nothing left


def test_string_ids_are_stored_and_read_back_whole(store_redis):
    """Opaque ids, with the characters that break naive keys and entries, load, record and read back."""
    store = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS)
    user, items = "6f1c-ü {x}", ["sku:1/{a} b", "sku:2", "plain-3"]
    users = pd.DataFrame(
        {"user_id": [user], "gender": ["F"], "age": [30], "occupation": [""], "zip_code": [""]}
    )
    interactions = pd.DataFrame(
        {"user_id": [user] * 3, "item_id": items, "rating": [5, 4, 3], "timestamp": [1, 2, 3]}
    )
    store.bulk_load(users, interactions, history_length=5, marker="strings")
    store.record_event(user, HistoryEvent("sku:4 ü", 4, 10, None), history_length=5)
    state = store.get_user_state(user, history_length=5)
    assert state.features["gender"] == "F"
    assert state.history_items.tolist() == ["sku:4 ü", "plain-3", "sku:2", "sku:1/{a} b"]
    assert state.history_events[:, 0].tolist() == [4, 3, 3, 3]
    assert sorted(state.seen.tolist()) == sorted([*items, "sku:4 ü"])
    assert store.ratings(user) == {"sku:1/{a} b": 5.0, "sku:2": 4.0, "plain-3": 3.0}
    assert store.get_user_state("6f1c-ü {y}", history_length=5).features is None  # another user


def test_further_profile_columns_are_loaded_beside_the_demographics(store_redis):
    store = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS)
    users = pd.DataFrame(
        {
            "user_id": [1, 2],
            "gender": ["F", "M"],
            "age": [30, 40],
            "occupation": ["", ""],
            "zip_code": ["", ""],
            "tier": ["A", None],  # user 2 has no tier: nothing is written for it
        }
    )
    interactions = pd.DataFrame({"user_id": [1], "item_id": [10], "rating": [5], "timestamp": [1]})
    store.bulk_load(users, interactions, history_length=5, marker="tiers")
    assert store.get_user_state(1, 5).features["tier"] == "A"
    assert "tier" not in store.get_user_state(2, 5).features
    assert store.get_user_state(2, 5).features["zip_code"] == ""  # demographics are written empty or not


def test_events_count_as_activity_since_the_value_load_they_follow(store_redis):
    from cascade.customers.live import live_value
    from cascade.customers.profiles import value_profiles

    store = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS)
    rng = np.random.default_rng(0)
    interactions = pd.DataFrame(
        {
            "user_id": rng.integers(1, 41, 400),
            "item_id": rng.integers(1, 200, 400),
            "rating": rng.integers(1, 6, 400).astype(float),
            "timestamp": rng.integers(0, 100 * 86_400, 400),
        }
    )
    values, scale = value_profiles(interactions, CustomersConfig())
    values["value_load"] = "load-1"
    demographics = pd.DataFrame(
        {"user_id": values["user_id"], "gender": "", "age": -1, "occupation": "", "zip_code": ""}
    )
    store.set_value_scale(scale)
    store.bulk_load(demographics.merge(values, on="user_id"), interactions, history_length=10, marker="m1")
    store.ping()  # reads the scale, as the server's probe does
    assert store.value_scale == scale
    weakest = values.sort_values("current_value").iloc[0]
    user = int(weakest["user_id"])
    before = store.get_user_state(user, 10)
    assert before.activity is None and live_value(before.features, None, scale, time.time()).tier == "D"
    for n in range(6):
        store.record_event(
            user, HistoryEvent(100 + n, 3, 10**9 + n, 5.0), 10, event_id=f"e{n}", dedupe_window_s=60
        )
    store.record_event(
        user, HistoryEvent(100, 3, 10**9, 5.0), 10, event_id="e0", dedupe_window_s=60
    )  # a retry
    after = store.get_user_state(user, 10)
    assert after.activity["events"] == "6" and float(after.activity["stars"]) == 30.0
    live = live_value(after.features, after.activity, scale, time.time())
    assert live.moved and live.events_since_load == 6 and live.recency_score == 5 and live.tier < "D"
    # a load of other data starts the count again at the next event: what it loaded covers the rest
    store_redis.hset(store.keyspace.profile_key(store.tag(user)), "value_load", "load-2")
    store.record_event(user, HistoryEvent(300, 1, 10**9 + 9), 10)
    activity = store.get_user_state(user, 10).activity
    assert activity["load"] == "load-2" and activity["events"] == "1" and "stars" not in activity
