"""The feature store as serving uses it, against a real redis-server that is killed, paused and
restarted: bounded waits, the breaker, stale answers, retryable write failures, and no acknowledged event
lost."""

from __future__ import annotations

import time

import pytest

from cascade.bench.redis_process import RedisProcess
from cascade.core.errors import DependencyUnavailableError
from cascade.serving.breaker import BreakerState
from cascade.serving.feature_store import HistoryEvent
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from cascade.serving.feature_store.resilient import (
    FEATURE_STORE_UNAVAILABLE,
    STALE_FEATURES,
    ResilientFeatureStore,
)
from tests.helpers import PSEUDONYMS


@pytest.fixture
def redis_process(tmp_path):
    process = RedisProcess(tmp_path / "redis").start()
    yield process
    process.stop()


def _store(url: str) -> ResilientFeatureStore:
    backend = RedisFeatureStore.from_url(url, cache_size=0, timeout_s=0.2, pseudonyms=PSEUDONYMS)
    return ResilientFeatureStore(backend, timeout_s=0.2, breaker_failures=2, breaker_reset_s=0.2)


def test_an_outage_degrades_reads_refuses_writes_retryably_and_heals_by_itself(redis_process):
    store = _store(redis_process.url)
    try:
        acknowledged = store.record_event(1, HistoryEvent(10, 1, 100), 50, "e-1", 3600)
        assert not acknowledged.duplicate
        fresh = store.read_user(1, 50, wait_s=1.0)
        assert fresh.degraded_reason is None and fresh.state.history_items.tolist() == [10]

        redis_process.kill()  # right after the acknowledgement: the log already holds it
        stale = store.read_user(1, 50, wait_s=1.0)
        assert stale.degraded_reason == STALE_FEATURES and stale.state.history_items.tolist() == [10]
        unknown = store.read_user(2, 50, wait_s=1.0)
        assert unknown.state is None and unknown.degraded_reason == FEATURE_STORE_UNAVAILABLE
        with pytest.raises(DependencyUnavailableError) as refused:
            store.record_event(1, HistoryEvent(11, 1, 101), 50, "e-2", 3600)
        assert refused.value.status == "UNAVAILABLE" and refused.value.retry_after_s > 0
        assert store.breaker.state is BreakerState.OPEN
        # pin impressions cannot be read: None, so the server shows no capped pin; counting them fails quietly
        assert store.impressions(1, ["campaign-7"]) is None
        store.count_impressions(1, [("campaign-7", 60)])
        started = time.perf_counter()
        for _ in range(100):  # an open breaker answers from the cache without touching Redis
            assert store.read_user(1, 50, wait_s=1.0).degraded_reason == STALE_FEATURES
        assert time.perf_counter() - started < 0.5

        redis_process.start()
        deadline = time.monotonic() + 5
        while not store.probe():
            assert time.monotonic() < deadline, "the breaker did not close after Redis returned"
            time.sleep(0.05)
        assert store.breaker.state is BreakerState.CLOSED
        back = store.read_user(1, 50, wait_s=1.0)
        assert back.degraded_reason is None and back.state.history_items.tolist() == [10]  # not lost
        retried = store.record_event(1, HistoryEvent(10, 1, 100), 50, "e-1", 3600)
        assert retried.duplicate  # the idempotency key survived the restart too
        store.count_impressions(1, [("campaign-7", 60)])
        deadline = time.monotonic() + 5  # counted on the read pool, after the answer
        while store.impressions(1, ["campaign-7"]) != {"campaign-7": 1}:
            assert time.monotonic() < deadline, "an impression was not counted after Redis returned"
            time.sleep(0.05)
    finally:
        store.close()


def test_a_slow_redis_costs_a_read_its_wait_not_the_redis_timeout(redis_process):
    store = _store(redis_process.url)
    try:
        store.read_user(3, 50, wait_s=1.0)  # cached
        redis_process.pause(1.0)
        started = time.perf_counter()
        lookup = store.read_user(3, 50, wait_s=0.03)
        waited = time.perf_counter() - started
        assert lookup.degraded_reason == STALE_FEATURES
        assert waited < 0.15, f"waited {waited:.3f} s for a 0.03 s budget"
    finally:
        store.close()


def test_an_event_acknowledged_before_an_outage_is_in_the_cached_answer(redis_process):
    store = _store(redis_process.url)
    try:
        store.read_user(4, 50, wait_s=1.0)  # cached with an empty history
        store.record_event(4, HistoryEvent(30, 2, 200), 50, None, 0)
        store.record_event(4, HistoryEvent(31, 1, 201), 50, None, 0)
        redis_process.kill()
        stale = store.read_user(4, 50, wait_s=1.0)
        assert stale.degraded_reason == STALE_FEATURES
        assert stale.state.history_items.tolist() == [31, 30] and sorted(stale.state.seen.tolist()) == [
            30,
            31,
        ]
    finally:
        store.close()
