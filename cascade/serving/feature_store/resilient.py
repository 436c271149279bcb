"""The feature store as the server uses it: bounded waits, a circuit breaker, and the last features read of
recent users kept to answer them while the store cannot.

Reads run on a small pool of their own and the request waits for one no longer than its share of the
deadline: a slow Redis costs a request that share, never the rest of its deadline, and a read that
finishes late still refreshes the cache (stale-while-revalidate). Writes wait for Redis (bounded by the
client's timeout) because an acknowledgement must mean the event is stored.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import redis

from cascade.core.errors import DependencyUnavailableError
from cascade.customers.live import ValueScale
from cascade.serving.breaker import BreakerState, CircuitBreaker
from cascade.serving.feature_store import keys
from cascade.serving.feature_store.base import (
    RECORDED,
    EventChecks,
    HistoryEvent,
    OnlineFeatureStore,
    RecordResult,
    UserState,
)
from cascade.serving.feature_store.cache import MISSING, TTLCache

logger = logging.getLogger(__name__)

FEATURE_STORE_UNAVAILABLE = "feature_store_unavailable"
STALE_FEATURES = "stale_features"

# What a failing Redis raises: connection refused or reset, timeouts, a server that is loading its data or
# refuses writes (MISCONF after a failed save), the client's own pool running dry.
_STORE_FAILURES = (redis.RedisError, OSError)
T = TypeVar("T")


@dataclass(frozen=True)
class UserLookup:
    """The user's state when the store (or, failing it, the cache) had it; None when neither could tell.
    ``degraded_reason`` says why the answer is not a fresh read."""

    state: UserState | None
    degraded_reason: str | None = None


def _with_event(history_length: int, state: UserState, event: HistoryEvent) -> tuple[int, UserState]:
    """A cached state with an event just stored put in too, so that an answer from the cache never misses
    an acknowledged event."""
    item = keys.ids_of_tokens([keys.id_token(event.item_id).encode()])  # as a read would give it
    items = _joined(item, state.history_items)[:history_length]
    row = np.array([[event.event_type, event.timestamp]], dtype=np.int64)
    events = np.concatenate([row, state.history_events])[:history_length]
    known = {str(seen) for seen in state.seen.tolist()}
    seen = state.seen if str(item[0]) in known else _joined(state.seen, item)
    activity = dict(state.activity or {})
    activity["events"] = str(int(activity.get("events", 0)) + 1)
    activity["stars"] = str(float(activity.get("stars", 0.0)) + (event.rating or 0.0))
    activity["last"] = repr(time.time())
    return history_length, UserState(state.features, items, events, seen, activity, state.forgotten)


def _joined(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Two id arrays end to end: int64 when both are (or one is empty), else object str."""
    if first.dtype == second.dtype or not len(second):
        return np.concatenate([first, second.astype(first.dtype)])
    if not len(first):
        return second.copy()
    return np.array([str(i) for i in [*first.tolist(), *second.tolist()]], dtype=object)


class ResilientFeatureStore:
    def __init__(
        self,
        backend: OnlineFeatureStore,
        *,
        timeout_s: float,
        read_threads: int = 8,
        max_pending_reads: int = 64,
        breaker_failures: int = 3,
        breaker_reset_s: float = 0.5,
        stale_cache_size: int = 20_000,
        stale_max_age_s: float = 900.0,
        on_breaker_change: Callable[[BreakerState], None] | None = None,
        on_lookup: Callable[[str], None] | None = None,
    ):
        """``on_lookup`` is told how each read ended: fresh, stale, miss (nothing to answer with)."""
        self.backend = backend
        self.timeout_s = timeout_s
        # the store's breaker: readiness, the probe, and every call on one server
        self.breaker = CircuitBreaker(
            "feature-store", breaker_failures, breaker_reset_s, on_change=on_breaker_change
        )
        # on a cluster, one per node for its users' calls: a failed master refuses its users only
        self._node_breakers: dict[str, CircuitBreaker] = {}
        self._node_breakers_lock = threading.Lock()
        self._breaker_settings = (breaker_failures, breaker_reset_s)
        self._reads = ThreadPoolExecutor(read_threads, thread_name_prefix="cascade-store-read")
        self._pending = threading.BoundedSemaphore(max_pending_reads)
        # user id -> (history length, state) of each recent user's last read, served up to stale_max_age_s
        self._cache = TTLCache(stale_cache_size, stale_max_age_s)
        self._on_lookup = on_lookup

    def breaker_for(self, user_id: int | str | None) -> CircuitBreaker:
        """The breaker of ``user_id``'s calls: on a cluster the one of the node holding the user's keys
        (``shard_of``), so that the other nodes' users are served and stored meanwhile; else the store's."""
        node = self.backend.shard_of(user_id) if user_id is not None else None
        if node is None:
            return self.breaker
        breaker = self._node_breakers.get(node)
        if breaker is None:
            with self._node_breakers_lock:
                breaker = self._node_breakers.setdefault(
                    node, CircuitBreaker(f"feature-store node {node}", *self._breaker_settings)
                )
        return breaker

    def read_user(self, user_id: int | str, history_length: int, wait_s: float) -> UserLookup:
        """The user's state, waiting at most ``wait_s`` (and the store's timeout) for Redis; else their
        cached state if recent enough, else None. Never raises for a store failure.

        A caller with at least the store's timeout to wait reads in its own thread (the client's timeout
        bounds the read); one with less hands the read to the read pool and stops waiting at ``wait_s``."""
        state = None
        breaker = self.breaker_for(user_id)
        if breaker.allow():
            if wait_s >= self.timeout_s:
                try:
                    state = self._read_now(user_id, history_length, breaker)
                except _STORE_FAILURES:
                    state = None
            else:
                future = self._submit_read(user_id, history_length, breaker)
                if future is not None:
                    try:
                        state = future.result(timeout=max(wait_s, 0.0))
                    except FutureTimeout:
                        state = None  # the read goes on and refreshes the cache when it ends
                    except _STORE_FAILURES:
                        state = None
        if state is not None:
            self._count("fresh")
            return UserLookup(state)
        cached = self._cache.get(user_id)
        if cached is not MISSING and cached[0] == history_length:
            self._count("stale")
            return UserLookup(cached[1], STALE_FEATURES)
        self._count("miss")
        return UserLookup(None, FEATURE_STORE_UNAVAILABLE)

    def _submit_read(self, user_id: int | str, history_length: int, breaker: CircuitBreaker) -> Future | None:
        """Start a read on the read pool; None (and the breaker's trial slot given back) when too many are
        in flight already."""
        if not self._pending.acquire(blocking=False):
            if breaker.state is BreakerState.HALF_OPEN:
                breaker.failed()  # give the trial slot back rather than leave it taken
            return None
        try:
            # in the caller's context: the read logs under its request id and traces under its span
            return self._reads.submit(
                contextvars.copy_context().run, self._read, user_id, history_length, breaker
            )
        except RuntimeError:  # the pool is shut down: the server is stopping
            self._pending.release()
            return None

    def _read(self, user_id: int | str, history_length: int, breaker: CircuitBreaker) -> UserState:
        """A read on the read pool: gives its pending slot back whatever happens."""
        try:
            return self._read_now(user_id, history_length, breaker)
        finally:
            self._pending.release()

    def _read_now(self, user_id: int | str, history_length: int, breaker: CircuitBreaker) -> UserState:
        try:
            state = self.backend.get_user_state(user_id, history_length)
        except _STORE_FAILURES:
            breaker.failed()
            raise
        except BaseException:
            breaker.succeeded()  # the store answered; what it answered is another matter
            raise
        breaker.succeeded()
        self._cache.put(user_id, (history_length, state))
        return state

    def record_event(
        self,
        user_id: int | str,
        event: HistoryEvent,
        history_length: int,
        event_id: str | None,
        dedupe_window_s: int,
        checks: EventChecks | None = None,
    ) -> RecordResult:
        """Store the event or raise DependencyUnavailableError: an UNAVAILABLE the caller may retry (with
        the same event_id, so a write that did land before a timeout is not recorded twice)."""
        result = self.write(
            "event not recorded",
            self.backend.record_event,
            user_id,
            event,
            history_length,
            event_id,
            dedupe_window_s,
            checks,
            user=user_id,
        )
        if not result.duplicate and result.outcome == RECORDED:
            self._cache.update(user_id, lambda cached: _with_event(*cached, event))
        return result

    def write(self, lost: str, call: Callable[..., T], *args, user: int | str | None = None) -> T:
        """``call(*args)`` on the backend behind the breaker (``user``'s, when the call is about one user's
        keys: ``breaker_for``), or DependencyUnavailableError (UNAVAILABLE, retryable) saying what was
        ``lost``: for a write, or an operator's read, that must not be guessed."""
        breaker = self.breaker_for(user)
        if not breaker.allow():
            raise DependencyUnavailableError(
                f"feature store unavailable; {lost}, retry later",
                retry_after_s=max(breaker.retry_after_s(), 0.1),
            )
        try:
            result = call(*args)
        except _STORE_FAILURES as exc:
            breaker.failed()
            raise DependencyUnavailableError(
                f"feature store unavailable ({type(exc).__name__}); {lost}, retry later",
                retry_after_s=max(breaker.retry_after_s(), 0.1),
            ) from None
        breaker.succeeded()
        return result

    def consume_rates(self, windows: list[tuple[bytes, int, float]]) -> list[float | None] | None:
        """``OnlineFeatureStore.consume_rates``, or None when the store cannot count them now. The counters
        are not the user's keys: on a cluster they live on any node, and one node's failure must neither
        refuse every event nor open the store's breaker, so no breaker counts the outcome. Not tried while
        the store's breaker is open (the store is out, not a node)."""
        if self.breaker.state is BreakerState.OPEN:
            return None
        try:
            return self.backend.consume_rates(windows)
        except _STORE_FAILURES as exc:
            logger.warning("event rate windows not counted: %s", type(exc).__name__)
            return None

    def forget_user(self, user_id: int | str) -> dict[str, int]:
        """``OnlineFeatureStore.forget_user``, and the user's last state out of this process's cache (other
        processes' caches let it go within their TTL). UNAVAILABLE when the store cannot answer."""
        removed = self.write("user not forgotten", self.backend.forget_user, user_id)
        self._cache.discard(user_id)
        return removed

    def impressions(self, user_id: int | str, counters: list[str]) -> dict[str, int] | None:
        """The user's impression counters (``OnlineFeatureStore.impressions``), None when the store cannot
        say: the caller then treats each capped pin as spent, rather than show it past its cap."""
        if not counters:
            return {}
        breaker = self.breaker_for(user_id)
        if not breaker.allow():
            return None
        try:
            counts = self.backend.impressions(user_id, counters)
        except _STORE_FAILURES:
            breaker.failed()
            return None
        breaker.succeeded()
        return counts

    def count_impressions(self, user_id: int | str, counters: list[tuple[str, float]]) -> None:
        """Count the impressions on the read pool, after the answer: a lost count lets a pin show once more
        than its cap, which does not justify failing or slowing the request that showed it."""
        if not counters:
            return

        def count() -> None:
            try:
                self.backend.count_impressions(user_id, counters)
            except _STORE_FAILURES as exc:  # the breaker is the reads' business: it is not touched here
                logger.warning("pin impressions not counted: %s", type(exc).__name__)

        with contextlib.suppress(RuntimeError):  # the pool is shut down: the server is stopping
            self._reads.submit(contextvars.copy_context().run, count)

    @property
    def value_scale(self) -> ValueScale | None:
        """The scale of the last value load, as the last probe read it (``customers.live``)."""
        return self.backend.value_scale

    def probe(self) -> bool:
        """Ping the store when the breaker allows a call (and follow its keyspace pointer); True when it
        answered. The server calls this periodically so that the breaker closes soon after the store
        returns even without traffic."""
        if not self.breaker.allow():
            return False
        try:
            self.backend.ping()  # also follows a loader's keyspace switch
        except _STORE_FAILURES:
            self.breaker.failed()
            return False
        self.breaker.succeeded()
        return True

    def _count(self, outcome: str) -> None:
        if self._on_lookup is not None:
            self._on_lookup(outcome)

    def close(self) -> None:
        self._reads.shutdown(wait=False, cancel_futures=True)
