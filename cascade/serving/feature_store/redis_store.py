"""Redis backend of the online feature store, with an in-process TTL cache for user profiles.

Profiles change only on bulk loads, so caching them is safe for a short TTL; history and the seen set
are always read from Redis, so an event recorded a moment ago is reflected by the next request.
"""

from __future__ import annotations

import logging
import time
import uuid

import numpy as np
import pandas as pd
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cascade.serving.feature_store import keys
from cascade.serving.feature_store.base import (
    USER_FEATURE_FIELDS,
    HistoryEvent,
    OnlineFeatureStore,
    RecordResult,
    UserState,
)
from cascade.serving.feature_store.cache import MISSING, TTLCache

logger = logging.getLogger(__name__)

# Append one event: history, seen set and rating change together or not at all (a script runs atomically),
# and an event id already recorded is acknowledged without a second append.
# KEYS: history, seen, ratings, event id key (all in the user's hash slot)
# ARGV: entry, history length, item id, rating ('' when none), dedupe window in seconds ('0': no event id)
_RECORD_EVENT_SCRIPT = """
if ARGV[5] ~= '0' then
  if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[5]) then
    return {redis.call('LLEN', KEYS[1]), 1}
  end
end
local length = redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('SADD', KEYS[2], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
end
return {length, 0}
"""

# Merge a data set's history into a stored one: the union of both (an identical entry once), latest first by
# timestamp (ties: stored before loaded, each in its order), cut to the history length. Atomic, so an event
# recorded while a load runs lands before or after the merge, never lost between a read and a write.
# KEYS: history. ARGV: history length, then the data set's entries.
_MERGE_HISTORY_SCRIPT = """
local limit = tonumber(ARGV[1])
local seen, merged = {}, {}
local function add(entry)
  if not seen[entry] then
    seen[entry] = true
    merged[#merged + 1] = {entry, tonumber(string.match(entry, ':(%-?%d+)$')), #merged + 1}
  end
end
for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do add(entry) end
for i = 2, #ARGV do add(ARGV[i]) end
table.sort(merged, function(a, b)
  if a[2] ~= b[2] then return a[2] > b[2] end
  return a[3] < b[3]
end)
redis.call('DEL', KEYS[1])
local kept = {}
for i = 1, math.min(limit, #merged) do kept[i] = merged[i][1] end
if #kept > 0 then redis.call('RPUSH', KEYS[1], unpack(kept)) end
return #kept
"""

# Release the load lock only if this loader still holds it.
_RELEASE_LOCK_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


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
        self._record_event = client.register_script(_RECORD_EVENT_SCRIPT)
        self._merge_history = client.register_script(_MERGE_HISTORY_SCRIPT)
        self._release_lock = client.register_script(_RELEASE_LOCK_SCRIPT)

    @classmethod
    def from_url(
        cls,
        url: str,
        cache_size: int = 100_000,
        cache_ttl_s: float = 60.0,
        timeout_s: float = 5.0,
    ) -> RedisFeatureStore:
        """A client whose every call fails within ``timeout_s`` and is never retried by redis-py itself
        (its default retries with backoff would hold a request for seconds while Redis is down): the
        caller decides, behind a circuit breaker."""
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        return cls(client, cache_size, cache_ttl_s, url)

    def get_user_state(self, user_id: int, history_length: int) -> UserState:
        cached = self._profiles.get(user_id)
        pipe = self.client.pipeline(transaction=False)
        if cached is MISSING:
            pipe.hgetall(keys.profile_key(user_id))
        pipe.lrange(keys.history_key(user_id), 0, history_length - 1)
        pipe.smembers(keys.seen_key(user_id))
        replies = pipe.execute()
        if cached is MISSING:
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

    def record_event(
        self,
        event_user_id: int,
        event: HistoryEvent,
        history_length: int,
        event_id: str | None = None,
        dedupe_window_s: int = 0,
    ) -> RecordResult:
        user = event_user_id
        dedupe = event_id is not None and dedupe_window_s > 0
        length, duplicate = self._record_event(
            keys=[
                keys.history_key(user),
                keys.seen_key(user),
                keys.ratings_key(user),
                keys.event_key(user, event_id if dedupe else "-"),
            ],
            args=[
                keys.encode_history_entry(event.item_id, event.event_type, event.timestamp),
                history_length,
                event.item_id,
                "" if event.rating is None else repr(float(event.rating)),
                int(dedupe_window_s) if dedupe else 0,
            ],
        )
        return RecordResult(history_length=min(int(length), history_length), duplicate=bool(duplicate))

    def ratings(self, user_id: int) -> dict[int, float]:
        """The user's latest rating of each item rated through RecordEvent or a bulk load."""
        raw = self.client.hgetall(keys.ratings_key(user_id))
        return {int(item): float(value) for item, value in raw.items()}

    def bulk_load(
        self,
        users: pd.DataFrame,
        interactions: pd.DataFrame,
        history_length: int,
        marker: str,
        chunk_users: int = 500,
    ) -> None:
        started = time.perf_counter()
        ordered = interactions.sort_values(
            ["user_id", "timestamp", "item_id"], ascending=[True, False, False], kind="mergesort"
        )
        event_types = (
            ordered["event_type"].to_numpy()
            if "event_type" in ordered
            else np.full(len(ordered), 3, dtype=np.int64)
        )  # dataset rows are ratings
        ratings = ordered["rating"].to_numpy() if "rating" in ordered else None
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
                    self._merge_history(
                        keys=[keys.history_key(user_id)], args=[history_length, *recent], client=pipe
                    )
                    pipe.sadd(keys.seen_key(user_id), *item_col[s:e].tolist())
                    if ratings is not None:
                        # latest first in the data set: the oldest rating of an item is overwritten
                        rated = dict(zip(item_col[s:e][::-1].tolist(), ratings[s:e][::-1].tolist()))
                        pipe.hset(keys.ratings_key(user_id), mapping=rated)
            pipe.execute()
        self.client.set(keys.LOAD_MARKER_KEY, marker)
        self._profiles.clear()
        logger.info("loaded %d users into Redis in %.1fs", len(all_user_ids), time.perf_counter() - started)

    def acquire_load_lock(self, ttl_s: float = 600.0) -> str | None:
        """A token when this process may load the data set (no one else is), else None."""
        token = uuid.uuid4().hex
        if self.client.set(keys.LOAD_LOCK_KEY, token, nx=True, px=int(ttl_s * 1000)):
            return token
        return None

    def release_load_lock(self, token: str) -> None:
        self._release_lock(keys=[keys.LOAD_LOCK_KEY], args=[token])

    def loaded_marker(self) -> str | None:
        raw = self.client.get(keys.LOAD_MARKER_KEY)
        return raw.decode() if raw is not None else None

    def ping(self) -> None:
        self.client.ping()

    def close(self) -> None:
        self.client.close()
