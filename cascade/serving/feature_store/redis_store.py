"""Redis backend of the online feature store, with an in-process TTL cache for user profiles.

Profiles change only on bulk loads, so caching them is safe for a short TTL; history and the seen set
are always read from Redis, so an event recorded a moment ago is reflected by the next request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

import numpy as np
import pandas as pd
import redis

from cascade.serving.feature_store import keys
from cascade.serving.feature_store.base import (
    USER_FEATURE_FIELDS,
    HistoryEvent,
    OnlineFeatureStore,
    UserState,
)

logger = logging.getLogger(__name__)

_MISSING = object()


class TTLCache:
    """Thread-safe LRU cache whose entries expire ``ttl_s`` seconds after being stored."""

    def __init__(self, max_size: int, ttl_s: float):
        self.max_size, self.ttl_s = max_size, ttl_s
        self._data: OrderedDict[int, tuple[float, object]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: int) -> object:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return _MISSING
            if entry[0] < time.monotonic():
                del self._data[key]
                return _MISSING
            self._data.move_to_end(key)
            return entry[1]

    def put(self, key: int, value: object) -> None:
        if self.max_size == 0 or self.ttl_s == 0:
            return
        with self._lock:
            self._data[key] = (time.monotonic() + self.ttl_s, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class RedisFeatureStore(OnlineFeatureStore):
    def __init__(
        self,
        client: redis.Redis,
        cache_size: int = 100_000,
        cache_ttl_s: float = 60.0,
        url: str | None = None,
    ):
        self.client = client
        self.url = url  # how another process reaches the same server, when known
        self._profiles = TTLCache(cache_size, cache_ttl_s)

    @classmethod
    def from_url(cls, url: str, cache_size: int = 100_000, cache_ttl_s: float = 60.0) -> RedisFeatureStore:
        return cls(redis.Redis.from_url(url, socket_timeout=5.0), cache_size, cache_ttl_s, url)

    def get_user_state(self, user_id: int, history_length: int) -> UserState:
        cached = self._profiles.get(user_id)
        pipe = self.client.pipeline(transaction=False)
        if cached is _MISSING:
            pipe.hgetall(keys.profile_key(user_id))
        pipe.lrange(keys.history_key(user_id), 0, history_length - 1)
        pipe.smembers(keys.seen_key(user_id))
        replies = pipe.execute()
        if cached is _MISSING:
            raw_profile = replies.pop(0)
            profile = {k.decode(): v.decode() for k, v in raw_profile.items()} if raw_profile else None
            self._profiles.put(user_id, profile)
        else:
            profile = cached  # type: ignore[assignment]
        raw_history, raw_seen = replies
        history = keys.decode_history_entries(raw_history)
        # a set's members are distinct, so the array needs no de-duplication
        seen = np.array(list(raw_seen), dtype=np.int64) if raw_seen else np.zeros(0, dtype=np.int64)
        return UserState(features=profile, history=history, seen=seen)

    def record_event(self, event_user_id: int, event: HistoryEvent, history_length: int) -> int:
        entry = keys.encode_history_entry(event.item_id, event.event_type, event.timestamp)
        pipe = self.client.pipeline(transaction=True)  # MULTI/EXEC: history and seen change together
        pipe.lpush(keys.history_key(event_user_id), entry)
        pipe.ltrim(keys.history_key(event_user_id), 0, history_length - 1)
        pipe.sadd(keys.seen_key(event_user_id), event.item_id)
        length_after_push = pipe.execute()[0]
        return min(int(length_after_push), history_length)

    def bulk_load(
        self,
        users: pd.DataFrame,
        interactions: pd.DataFrame,
        history_length: int,
        marker: str,
        chunk_users: int = 500,
    ) -> None:
        started = time.perf_counter()
        self.client.delete(keys.LOAD_MARKER_KEY)
        ordered = interactions.sort_values(
            ["user_id", "timestamp", "item_id"], ascending=[True, False, False], kind="mergesort"
        )
        event_types = (
            ordered["event_type"].to_numpy()
            if "event_type" in ordered
            else np.full(len(ordered), 3, dtype=np.int64)
        )  # dataset rows are ratings
        user_col = ordered["user_id"].to_numpy()
        uniq, starts = np.unique(user_col, return_index=True)
        ends = np.append(starts[1:], len(user_col))
        spans = {int(u): (int(s), int(e)) for u, s, e in zip(uniq, starts, ends)}
        item_col = ordered["item_id"].to_numpy()
        ts_col = ordered["timestamp"].to_numpy()
        user_ids = users["user_id"].to_numpy()
        profiles = users[list(USER_FEATURE_FIELDS)].astype(str).to_numpy()
        all_user_ids = np.union1d(user_ids, uniq)
        profile_of = {int(u): row for u, row in zip(user_ids, profiles)}
        for begin in range(0, len(all_user_ids), chunk_users):
            pipe = self.client.pipeline(transaction=False)
            for user_id in all_user_ids[begin : begin + chunk_users].tolist():
                pipe.delete(keys.profile_key(user_id), keys.history_key(user_id), keys.seen_key(user_id))
                if user_id in profile_of:
                    pipe.hset(
                        keys.profile_key(user_id), mapping=dict(zip(USER_FEATURE_FIELDS, profile_of[user_id]))
                    )
                if user_id in spans:
                    s, e = spans[user_id]
                    recent = [
                        keys.encode_history_entry(int(i), int(t), int(ts))
                        for i, t, ts in zip(
                            item_col[s:e][:history_length],
                            event_types[s:e][:history_length],
                            ts_col[s:e][:history_length],
                        )
                    ]
                    pipe.rpush(keys.history_key(user_id), *recent)
                    pipe.sadd(keys.seen_key(user_id), *item_col[s:e].tolist())
            pipe.execute()
        self.client.set(keys.LOAD_MARKER_KEY, marker)
        self._profiles.clear()
        logger.info("loaded %d users into Redis in %.1fs", len(all_user_ids), time.perf_counter() - started)

    def loaded_marker(self) -> str | None:
        raw = self.client.get(keys.LOAD_MARKER_KEY)
        return raw.decode() if raw is not None else None

    def ping(self) -> None:
        self.client.ping()

    def close(self) -> None:
        self.client.close()
