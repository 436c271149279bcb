"""The guard's part of the Redis feature store against a real redis-server: rate windows, quarantine,
blocks, clearance and the flag list."""

from __future__ import annotations

import pytest

from cascade.bench.redis_process import RedisProcess
from cascade.core.artifacts import ArtifactStore
from cascade.core.errors import BlockedError, RateLimitedError
from cascade.core.privacy import Pseudonymiser
from cascade.guard.config import GuardConfig
from cascade.serving.breaker import BreakerState
from cascade.serving.feature_store import HistoryEvent, keys
from cascade.serving.feature_store.base import BLOCKED, FLAGGED, LIMITED, QUARANTINED, RECORDED, EventChecks
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from cascade.serving.feature_store.resilient import ResilientFeatureStore
from cascade.serving.guard import EventGuard
from tests.helpers import PSEUDONYMS

CHECKS = EventChecks(user_limit=3, window_s=60.0, quarantine_length=100)


def _rate(store: RedisFeatureStore, user: int | str, item: int, at: int, rating: float | None = 4.0):
    return store.record_event(user, HistoryEvent(item, 3, at, rating), 50, None, 0, CHECKS)


def test_a_users_rate_window_refuses_past_its_limit_and_stores_nothing(store_redis):
    store = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS)
    outcomes = [_rate(store, 1, item, 100 + item) for item in range(1, 5)]
    assert [r.outcome for r in outcomes] == [RECORDED, RECORDED, RECORDED, LIMITED]
    assert 0 < outcomes[-1].retry_after_s <= 60
    state = store.get_user_state(1, 50)
    assert state.history_items.tolist() == [3, 2, 1]  # the refused event left no trace
    assert outcomes[2].ratings == 3
    # another user has a window of their own
    assert _rate(store, 2, 1, 100).outcome == RECORDED
    # a retried event (same id) is acknowledged as a duplicate and does not use the window up
    first = store.record_event(3, HistoryEvent(1, 2, 5), 50, "e1", 60, CHECKS)
    again = [store.record_event(3, HistoryEvent(1, 2, 5), 50, "e1", 60, CHECKS) for _ in range(5)]
    assert first.outcome == RECORDED and all(r.duplicate for r in again)
    assert _rate(store, 3, 2, 6).outcome == RECORDED


def test_client_and_item_windows(store_redis):
    store = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS)
    client, item = keys.rate_key("client", "key:app"), keys.rate_key("item", 7)
    assert store.consume_rates([(client, 2, 60.0), (item, 5, 60.0)]) == [None, None]
    assert store.consume_rates([(client, 2, 60.0)]) == [None]
    waits = store.consume_rates([(client, 2, 60.0), (item, 5, 60.0)])
    assert waits[0] > 0 and waits[1] is None  # the client's window is full; the item's has room


def test_a_flagged_users_events_are_quarantined_then_released_in_order(store_redis):
    store = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS)
    generous = EventChecks(user_limit=100, window_s=60.0, quarantine_length=100)
    store.record_event(5, HistoryEvent(1, 3, 10, 4.0), 50, None, 0, generous)
    assert store.set_guard_state(5, FLAGGED, "live score 0.97", 0.97, "detector") == (True, "")
    held = [store.record_event(5, HistoryEvent(item, 3, 10 + item, 5.0), 50, None, 0, generous)
            for item in (2, 3)]  # fmt: skip
    assert [r.outcome for r in held] == [QUARANTINED, QUARANTINED]
    state = store.get_user_state(5, 50)
    assert state.history_items.tolist() == [1] and sorted(state.seen.tolist()) == [1]
    assert store.ratings(5) == {1: 4.0}
    (flag,) = store.guard_flags(10)
    assert (flag.pseudonym, flag.state, flag.by, flag.quarantined) == (
        PSEUDONYMS.of(5),
        FLAGGED,
        "detector",
        2,
    )
    assert flag.reason == "live score 0.97" and flag.score == 0.97
    assert store.clear_guard(5, 50, discard=False) == (FLAGGED, 2)
    state = store.get_user_state(5, 50)
    assert state.history_items.tolist() == [3, 2, 1]  # released oldest first: the latest leads
    assert store.ratings(5) == {1: 4.0, 2: 5.0, 3: 5.0}
    assert store.guard_flags(10) == []
    assert store.record_event(5, HistoryEvent(4, 3, 20, 3.0), 50, None, 0, generous).outcome == RECORDED
    audit = store_redis.xrange(keys.GUARD_AUDIT_KEY)
    assert [entry[b"action"] for _, entry in audit] == [b"flagged", b"cleared"]


def test_a_block_refuses_events_outranks_a_flag_and_discarding_drops_the_quarantine(store_redis):
    store = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS)
    generous = EventChecks(user_limit=100, window_s=60.0, quarantine_length=2)
    store.set_guard_state("u-9", FLAGGED, "live", 0.95, "detector")
    for item in (1, 2, 3):
        store.record_event("u-9", HistoryEvent(item, 2, item), 50, None, 0, generous)
    assert store_redis.llen(keys.quarantine_key(PSEUDONYMS.of("u-9"))) == 2  # capped at quarantine_length
    assert store.set_guard_state("u-9", BLOCKED, "fraud team", 1.0, "key:ops") == (True, FLAGGED)
    assert store.set_guard_state("u-9", FLAGGED, "live", 0.99, "detector") == (False, BLOCKED)
    refused = store.record_event("u-9", HistoryEvent(4, 2, 4), 50, None, 0, generous)
    assert refused.outcome == BLOCKED
    assert store.clear_guard("u-9", 50, discard=True) == (BLOCKED, 2)
    assert store.get_user_state("u-9", 50).history_items.tolist() == []
    assert store.clear_guard("u-9", 50, discard=False) == (None, 0)  # nothing left to lift


def test_without_checks_recording_is_as_before(store_redis):
    store = RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS)
    store.set_guard_state(8, BLOCKED, "x", 1.0, "key:ops")
    result = store.record_event(8, HistoryEvent(1, 2, 1), 50)
    assert result.outcome == BLOCKED  # a block holds whatever the caller asks


def test_with_the_online_guard_off_a_block_still_refuses_and_a_quarantine_keeps_every_event(
    store_redis, tmp_path
):
    store = ResilientFeatureStore(RedisFeatureStore(store_redis, pseudonyms=PSEUDONYMS), timeout_s=1.0)
    guard = EventGuard(
        GuardConfig(online=False, quarantine_length=10),
        store,
        ArtifactStore(tmp_path),
        50,
        Pseudonymiser(b"k" * 16),
    )
    store.backend.set_guard_state(11, BLOCKED, "ops", 1.0, "key:ops")
    event = HistoryEvent(1, 2, 1)
    with pytest.raises(BlockedError):  # refused, not acknowledged as if stored
        guard.settle(11, event, store.record_event(11, event, 50, None, 0, guard.checks))
    store.backend.set_guard_state(12, FLAGGED, "live", 0.99, "detector")
    for item in (1, 2, 3):
        event = HistoryEvent(item, 2, item)
        guard.settle(12, event, store.record_event(12, event, 50, None, 0, guard.checks))
    assert store_redis.llen(keys.quarantine_key(PSEUDONYMS.of(12))) == 3
    # a caller that checks nothing keeps the guard's default quarantine length, not one event
    for item in (4, 5):
        store.backend.record_event(12, HistoryEvent(item, 2, item), 50)
    assert store_redis.llen(keys.quarantine_key(PSEUDONYMS.of(12))) == 5


def test_rate_counters_that_cannot_be_counted_do_not_refuse_the_event(tmp_path):
    outcomes: list[str] = []
    with RedisProcess(tmp_path / "redis", fsync="no") as process:
        store = ResilientFeatureStore(
            RedisFeatureStore.from_url(process.url, timeout_s=0.2, pseudonyms=PSEUDONYMS), timeout_s=0.2
        )
        guard = EventGuard(
            GuardConfig(client_events_per_window=1), store, ArtifactStore(tmp_path), 50, PSEUDONYMS,
            on_event=outcomes.append,
        )  # fmt: skip
        guard.admit("client-a", 1)
        with pytest.raises(RateLimitedError):
            guard.admit("client-a", 2)
        process.freeze()  # on a cluster: the node holding the counters, not the user's
        try:
            guard.admit("client-a", 3)  # not limited, not refused: the event goes on to the user's node
        finally:
            process.thaw()
        assert outcomes == ["limited_client", "unlimited"]
        assert store.breaker.state is BreakerState.CLOSED
        with pytest.raises(RateLimitedError):  # counted again once the node answers
            guard.admit("client-a", 4)
        store.backend.close()
