"""The feature store on replicated Redis: Sentinel promotes a replica when the master is killed, and an
event is acknowledged only once a replica holds it, so the failover loses none."""

from __future__ import annotations

import threading
import time

import pytest

from cascade.bench.redis_cluster import RedisSentinelGroup
from cascade.core.errors import DependencyUnavailableError
from cascade.serving.feature_store import HistoryEvent
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from cascade.serving.feature_store.resilient import ResilientFeatureStore
from tests.helpers import PSEUDONYMS

HISTORY = 10_000  # every event stays in the history, so that each can be found again


@pytest.fixture
def sentinel_group(tmp_path):
    group = RedisSentinelGroup(tmp_path / "sentinel", down_after_ms=1000).start()
    yield group
    group.stop()


def _store(url: str) -> ResilientFeatureStore:
    backend = RedisFeatureStore.from_url(
        url, cache_size=0, timeout_s=0.3, pseudonyms=PSEUDONYMS, replica_acks=1, replica_ack_timeout_s=0.1
    )
    return ResilientFeatureStore(backend, timeout_s=0.3, breaker_failures=2, breaker_reset_s=0.1)


def test_an_event_waits_for_its_replica_and_is_refused_retryably_when_it_cannot(sentinel_group):
    store = _store(sentinel_group.url)
    try:
        assert not store.record_event(1, HistoryEvent(10, 1, 100), HISTORY, "e-1", 3600).duplicate
        replica = sentinel_group.replicas[0]
        replica.freeze()  # connected, in sync a moment ago, and answering nothing
        try:
            with pytest.raises(DependencyUnavailableError):
                store.record_event(1, HistoryEvent(11, 1, 101), HISTORY, "e-2", 3600)
        finally:
            replica.thaw()
        deadline = time.monotonic() + 10
        while True:  # the breaker lets a trial call through; the replica catches up
            try:
                retried = store.record_event(1, HistoryEvent(11, 1, 101), HISTORY, "e-2", 3600)
                break
            except DependencyUnavailableError:
                assert time.monotonic() < deadline, "the thawed replica never acknowledged"
                time.sleep(0.05)
        assert retried.duplicate  # stored on the master by the refused call: the retry stores it once
        replica.kill()  # no replica left: the master acknowledges alone rather than refuse every event
        time.sleep(0.2)
        assert not store.record_event(1, HistoryEvent(12, 1, 102), HISTORY, "e-3", 3600).duplicate
        history = store.backend.get_user_state(1, HISTORY).history_items.tolist()
        assert history == [12, 11, 10]
    finally:
        store.backend.close()


def test_sentinel_promotes_the_replica_and_no_acknowledged_event_is_lost(sentinel_group):
    store = _store(sentinel_group.url)
    acknowledged: list[int] = []
    refused: list[int] = []
    unexpected: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            try:
                store.record_event(n % 7, HistoryEvent(n, 1, 1_000 + n), HISTORY, f"e-{n}", 3600)
                acknowledged.append(n)
            except DependencyUnavailableError:
                refused.append(n)
                time.sleep(0.01)
            except BaseException as exc:  # anything else fails the test below
                unexpected.append(exc)
            n += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(0.5)
        before = len(acknowledged)
        sentinel_group.master.kill()
        killed_at = time.monotonic()
        promoted_after = sentinel_group.wait_for_new_master(sentinel_group.master)
        deadline = time.monotonic() + 15
        while len(acknowledged) < before + 20 or acknowledged[-1] < (refused[-1] if refused else 0):
            assert time.monotonic() < deadline, "writes did not recover after the promotion"
            time.sleep(0.05)
        recovered_after = time.monotonic() - killed_at
    finally:
        stop.set()
        writer.join()
    assert not unexpected, unexpected[:3]
    assert before > 0 and refused, "the kill should have refused some writes"
    assert promoted_after < recovered_after < promoted_after + 5
    # every acknowledged event is on the promoted master: a retry is a duplicate, the history holds it
    backend = store.backend
    try:
        held = set()
        for user in range(7):
            held |= set(backend.get_user_state(user, HISTORY).history_items.tolist())
        assert set(acknowledged) <= held, sorted(set(acknowledged) - held)[:10]
        for n in acknowledged[-5:] + acknowledged[:5]:
            assert backend.record_event(
                n % 7, HistoryEvent(n, 1, 1_000 + n), HISTORY, f"e-{n}", 3600
            ).duplicate
    finally:
        backend.close()
