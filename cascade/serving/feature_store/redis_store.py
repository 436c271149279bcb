"""Redis backend of the online feature store, with an in-process TTL cache for user profiles.

Profiles change only on bulk loads, so caching them is safe for a short TTL; history and the seen set
are always read from Redis, so an event recorded a moment ago is reflected by the next request.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable

import numpy as np
import pandas as pd
import redis
from redis.cluster import ClusterPipeline, RedisCluster
from redis.commands.core import Script

from cascade.core.privacy import PSEUDONYM, Pseudonym, Pseudonymiser
from cascade.core.schema import native_id
from cascade.customers.live import ValueScale
from cascade.guard.config import GuardConfig
from cascade.serving.feature_store import keys
from cascade.serving.feature_store.base import (
    USER_FEATURE_FIELDS,
    EventChecks,
    GuardFlag,
    HistoryEvent,
    OnlineFeatureStore,
    RecordResult,
    UserState,
)
from cascade.serving.feature_store.cache import MISSING, TTLCache
from cascade.serving.feature_store.connect import RedisClient, redis_client

logger = logging.getLogger(__name__)

# a block and a flag hold whether or not the caller checks rates: without checks, no user limit, and a
# flagged user's quarantine keeps as many events as the guard's default
NO_RATE_LIMIT = EventChecks(0, 1.0, GuardConfig.model_fields["quarantine_length"].default)
AUDIT_STREAM_LENGTH = 100_000  # the guard's audit stream keeps about this many of the latest decisions
REPLICAS_REFRESH_S = 1.0  # how long a master's count of online replicas is trusted before it is read again


def online_replica_count(master: redis.Redis) -> int:
    """Replicas in sync with ``master``: INFO replication's replicas whose state is online."""
    info = master.info("replication")
    return sum(
        1 for field, value in info.items()
        if field.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )  # fmt: skip


class ReplicationLagError(redis.RedisError):
    """An event is on its master but on fewer replicas than asked within the wait: not acknowledged (a
    failover now could lose it). Retrying with the same event id is safe: a stored event is not stored
    twice."""


# One sliding-window counter (an approximate sliding log: this fixed window's count plus the last one's,
# weighted by how much of it the sliding window still covers), in a hash: bucket, count, previous. Defines
# window_room(key, limit, window, now) -> the retry-after seconds as text when one more event does not fit
# (nothing counted), else false; and window_count(key, window, now), which counts one. Shared below.
_WINDOW_FUNCTIONS = """
local function window_state(key, window, now)
  local bucket = math.floor(now / window)
  local stored = redis.call('HMGET', key, 'bucket', 'count', 'previous')
  local count, previous = tonumber(stored[2]) or 0, tonumber(stored[3]) or 0
  local at = tonumber(stored[1])
  if at ~= bucket then
    if at == bucket - 1 then previous = count else previous = 0 end
    count = 0
  end
  return bucket, count, previous
end
local function window_room(key, limit, window, now)
  local bucket, count, previous = window_state(key, window, now)
  local left = 1 - (now - bucket * window) / window
  if previous * left + count + 1 <= limit then return false end
  local wait = left * window
  if previous > 0 and count + 1 <= limit then
    wait = math.max((left - (limit - count - 1) / previous) * window, 0.001)
  end
  return tostring(wait)
end
local function window_count(key, window, now)
  local bucket, count, previous = window_state(key, window, now)
  redis.call('HSET', key, 'bucket', bucket, 'count', count + 1, 'previous', previous)
  redis.call('EXPIRE', key, math.ceil(2 * window))
end
"""

# Append one event: history, seen set, rating and the activity since the value load change together or
# not at all (a script runs atomically), and an event id already recorded is acknowledged without a second
# append. The activity counts restart when the profile names another value load than the one they count
# since (``customers.live``). With the guard's checks (ARGV[7] > 0 or a state): a blocked user's event is
# refused, one past the user's rate limit too (the limit counts what is recorded or quarantined, not
# duplicates), and a flagged user's is pushed on their quarantine instead of their history.
# KEYS: history, seen, ratings, event id key, activity, profile, guard state, quarantine, user rate (all in
# the user's hash slot)
# ARGV: entry, history length, item id, rating ('' when none), dedupe window in seconds ('0': no event id),
# the recording time (unix seconds), user limit ('0': none), window seconds, quarantine length
# Returns {history length, duplicate (0/1), outcome, ratings, retry-after seconds as text}
_RECORD_EVENT_SCRIPT = (
    _WINDOW_FUNCTIONS
    + """
local now = tonumber(ARGV[6])
local state = redis.call('HGET', KEYS[7], 'state')
if state == 'blocked' then return {0, 0, 'blocked', 0, '0'} end
local limit, window = tonumber(ARGV[7]), tonumber(ARGV[8])
if limit > 0 then
  local wait = window_room(KEYS[9], limit, window, now)
  if wait then return {0, 0, 'limited', 0, wait} end
end
if ARGV[5] ~= '0' then
  if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[5]) then
    return {redis.call('LLEN', KEYS[1]), 1, 'recorded', redis.call('HLEN', KEYS[3]), '0'}
  end
end
if limit > 0 then window_count(KEYS[9], window, now) end
if state == 'flagged' then
  redis.call('LPUSH', KEYS[8], ARGV[1] .. '|' .. ARGV[4] .. '|' .. ARGV[6])
  redis.call('LTRIM', KEYS[8], 0, tonumber(ARGV[9]) - 1)
  return {redis.call('LLEN', KEYS[1]), 0, 'quarantined', redis.call('HLEN', KEYS[3]), '0'}
end
local length = redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('SADD', KEYS[2], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
end
local load = redis.call('HGET', KEYS[6], 'value_load') or ''
if redis.call('HGET', KEYS[5], 'load') ~= load then
  redis.call('DEL', KEYS[5])
  redis.call('HSET', KEYS[5], 'load', load)
end
redis.call('HINCRBY', KEYS[5], 'events', 1)
if ARGV[4] ~= '' then redis.call('HINCRBYFLOAT', KEYS[5], 'stars', ARGV[4]) end
redis.call('HSET', KEYS[5], 'last', ARGV[6])
return {length, 0, 'recorded', redis.call('HLEN', KEYS[3]), '0'}
"""
)

# Count one event against one client's or item's window, or say how long until it fits.
# KEYS: the counter. ARGV: limit, window seconds, now. Returns false, or the retry-after seconds as text.
_RATE_SCRIPT = (
    _WINDOW_FUNCTIONS
    + """
local limit, window, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local wait = window_room(KEYS[1], limit, window, now)
if wait then return wait end
window_count(KEYS[1], window, now)
return false
"""
)

# Flag or block a user; a flag never overrides a block. KEYS: guard state. ARGV: state, reason, score, since,
# by. Returns {1 when set else 0, the state before ('' for none)}.
_SET_GUARD_STATE_SCRIPT = """
local previous = redis.call('HGET', KEYS[1], 'state') or ''
if ARGV[1] == 'flagged' and previous == 'blocked' then return {0, previous} end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'reason', ARGV[2], 'score', ARGV[3], 'since', ARGV[4],
           'by', ARGV[5])
return {1, previous}
"""

# Lift a user's flag or block. Quarantined events (latest first) join history, seen set and ratings oldest
# first, unless discarded. KEYS: guard state, quarantine, history, seen, ratings. ARGV: history length,
# '1' to discard. Returns {state lifted or '', events released or dropped}.
_CLEAR_GUARD_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state') or ''
local held = redis.call('LRANGE', KEYS[2], 0, -1)
if ARGV[2] ~= '1' and #held > 0 then
  for i = #held, 1, -1 do
    local entry, rating = string.match(held[i], '^([^|]*)|([^|]*)|')
    redis.call('LPUSH', KEYS[3], entry)
    local item = string.match(entry, '^(.*):%-?%d+:%-?%d+$')
    redis.call('SADD', KEYS[4], item)
    if rating ~= '' then redis.call('HSET', KEYS[5], item, rating) end
  end
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[1]) - 1)
end
redis.call('DEL', KEYS[1], KEYS[2])
return {state, #held}
"""

# Replace the history at `key` by the union of it and `entries` (an identical entry once), latest first by
# timestamp (ties: stored before added, each in its order), cut to `limit`. Shared by the scripts below.
_MERGE_HISTORY_FUNCTION = """
local function merge_history(key, limit, entries)
  local seen, merged = {}, {}
  local function add(entry)
    if not seen[entry] then
      seen[entry] = true
      merged[#merged + 1] = {entry, tonumber(string.match(entry, ':(%-?%d+)$')), #merged + 1}
    end
  end
  for _, entry in ipairs(redis.call('LRANGE', key, 0, -1)) do add(entry) end
  for _, entry in ipairs(entries) do add(entry) end
  table.sort(merged, function(a, b)
    if a[2] ~= b[2] then return a[2] > b[2] end
    return a[3] < b[3]
  end)
  redis.call('DEL', key)
  local kept = {}
  for i = 1, math.min(limit, #merged) do kept[i] = merged[i][1] end
  if #kept > 0 then redis.call('RPUSH', key, unpack(kept)) end
  return #kept
end
"""

# Merge a data set's history into a stored one. Atomic, so an event recorded while a load runs lands before
# or after the merge, never lost between a read and a write.
# KEYS: history. ARGV: history length, then the data set's entries.
_MERGE_HISTORY_SCRIPT = (
    _MERGE_HISTORY_FUNCTION
    + """
return merge_history(KEYS[1], tonumber(ARGV[1]), {unpack(ARGV, 2)})
"""
)

# Move one user from one keyspace into another: profile (unless the new one has it), seen set (union),
# ratings (all on the first pass; on the catch-up pass only items the new keyspace has no rating of, since
# its own are newer), history (merged, cut to the new history length). Atomic per user, so an event
# recorded meanwhile lands before or after the move, never half-moved.
# KEYS: old profile, history, seen, ratings, then the new ones. ARGV: new history length, '1' first pass.
_MOVE_USER_SCRIPT = (
    _MERGE_HISTORY_FUNCTION
    + """
local profile = redis.call('HGETALL', KEYS[1])
if #profile > 0 and redis.call('EXISTS', KEYS[5]) == 0 then redis.call('HSET', KEYS[5], unpack(profile)) end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('SUNIONSTORE', KEYS[7], KEYS[7], KEYS[3]) end
local ratings = redis.call('HGETALL', KEYS[4])
for i = 1, #ratings, 2 do
  if ARGV[2] == '1' then redis.call('HSET', KEYS[8], ratings[i], ratings[i + 1])
  else redis.call('HSETNX', KEYS[8], ratings[i], ratings[i + 1]) end
end
return merge_history(KEYS[6], tonumber(ARGV[1]), redis.call('LRANGE', KEYS[2], 0, -1))
"""
)

# Release the load lock only if this loader still holds it.
_RELEASE_LOCK_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisFeatureStore(OnlineFeatureStore):
    def __init__(
        self,
        client: RedisClient,
        cache_size: int = 100_000,
        cache_ttl_s: float = 60.0,
        url: str | None = None,
        *,
        pseudonyms: Pseudonymiser,
        replica_acks: int = 1,
        replica_ack_timeout_s: float = 0.05,
    ):
        """``client``: one server's, a Sentinel master's or a cluster's. ``pseudonyms``: the key that makes
        users' tags; every process sharing the store needs the same. ``replica_acks``: replicas (of those
        online) an event must reach before it is acknowledged, waiting ``replica_ack_timeout_s`` at most;
        a master without online replicas acknowledges alone."""
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        self.pseudonyms = pseudonyms
        self.replica_acks = replica_acks
        self.replica_ack_timeout_s = replica_ack_timeout_s
        self._replica_counts: dict[str, tuple[int, float]] = {}  # node -> (count, monotonic time read)
        self.url = url  # how another process reaches the same server, when known
        self._profiles = TTLCache(cache_size, cache_ttl_s)
        self._record_event = client.register_script(_RECORD_EVENT_SCRIPT)
        self._value_scale: ValueScale | None = None
        self._value_scale_raw: bytes | None = None
        self._merge_history = client.register_script(_MERGE_HISTORY_SCRIPT)
        self._release_lock = client.register_script(_RELEASE_LOCK_SCRIPT)
        self._move_user = client.register_script(_MOVE_USER_SCRIPT)
        self._consume_rate = client.register_script(_RATE_SCRIPT)
        self._set_guard_state = client.register_script(_SET_GUARD_STATE_SCRIPT)
        self._clear_guard = client.register_script(_CLEAR_GUARD_SCRIPT)
        self._keyspace: keys.Keyspace | None = None  # read from the pointer before the first use
        self._refused_keyspace: keys.Keyspace | None = None  # a newer layout's, logged once

    @property
    def keyspace(self) -> keys.Keyspace:
        """The keyspace this store reads and writes: the pointer's, read at first use (never guessed, so
        that no write lands in a keyspace a loader has moved away from) and followed by refresh_keyspace."""
        if self._keyspace is None:
            self.refresh_keyspace()
        return self._keyspace  # type: ignore[return-value]

    @classmethod
    def from_url(
        cls,
        url: str,
        cache_size: int = 100_000,
        cache_ttl_s: float = 60.0,
        timeout_s: float = 5.0,
        *,
        pseudonyms: Pseudonymiser,
        replica_acks: int = 1,
        replica_ack_timeout_s: float = 0.05,
    ) -> RedisFeatureStore:
        """A client (of one server, a cluster or Sentinel: ``connect``) whose every call fails within
        ``timeout_s`` and is never retried by redis-py itself (its default retries with backoff would hold
        a request for seconds while Redis is down): the caller decides, behind a circuit breaker."""
        return cls(
            redis_client(url, timeout_s), cache_size, cache_ttl_s, url, pseudonyms=pseudonyms,
            replica_acks=replica_acks, replica_ack_timeout_s=replica_ack_timeout_s,
        )  # fmt: skip

    def tag(self, user_id: int | str, keyspace: keys.Keyspace | None = None) -> str:
        """The user's tag in ``keyspace``'s keys (default: the one in use): their pseudonym, or in layout v1
        their id's token. A ``Pseudonym`` names a user in pseudonymised keyspaces only."""
        if (keyspace or self.keyspace).pseudonymised:
            return self.pseudonyms.of(user_id)
        if isinstance(user_id, Pseudonym):
            raise ValueError(
                "the feature store is of key layout v1, by id: run `cascade features load` first"
            )
        return keys.id_token(user_id)

    def shard_of(self, user_id: int | str) -> str | None:
        """On a cluster, the master holding the user's keys as the client's slot map has it (host:port);
        None on one server, or while the map cannot say."""
        if not self.cluster:
            return None
        try:
            key = self.keyspace.history_key(self.tag(user_id))
            return self.client.nodes_manager.get_node_from_slot(self.client.keyslot(key)).name
        except (redis.RedisError, OSError):
            return None

    def _tags(self, user_id: int | str, keyspace: keys.Keyspace) -> tuple[str, str]:
        """(the user's tag in ``keyspace``, their guard keys' tag): one hash when both are the pseudonym."""
        guard = self.pseudonyms.of(user_id)  # the guard's keys outlive keyspaces: always by pseudonym
        return (guard if keyspace.pseudonymised else self.tag(user_id, keyspace)), guard

    def _durably(self, script: Script, script_keys: list[bytes], args: list) -> list:
        """Run ``script`` (its keys in one slot) and, where its master has online replicas, wait until
        ``replica_acks`` of them (at most those online) hold what it wrote: Redis replicates after the
        reply, so without the wait a master lost a moment after acknowledging an event could take it along
        (its replica, promoted, never had it). The script and WAIT go down one connection to the master in
        one round trip, as WAIT counts what that connection wrote."""
        if self.replica_acks <= 0:
            return script(keys=script_keys, args=args)
        name, master = self._master_of(script_keys[0])
        wanted = min(self.replica_acks, self._online_replicas(name, master))
        if wanted == 0:
            return script(keys=script_keys, args=args)
        try:
            reply, acked = self._eval_and_wait(master, script, script_keys, args, wanted)
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.MovedError, OSError):
            self._refresh_slots()  # a failed or moved master: the next call finds the new one
            raise
        if acked < wanted and acked < min(self.replica_acks, self._online_replicas(name, master, fresh=True)):
            raise ReplicationLagError(
                f"an event reached {acked} of {wanted} replicas within {self.replica_ack_timeout_s:g} s"
            )
        return reply

    def _eval_and_wait(
        self, master: redis.Redis, script: Script, script_keys: list[bytes], args: list, wanted: int
    ) -> tuple[list, int]:
        for attempt in range(2):
            pipe = master.pipeline(transaction=False)
            pipe.evalsha(script.sha, len(script_keys), *script_keys, *args)
            pipe.execute_command("WAIT", wanted, max(int(self.replica_ack_timeout_s * 1000), 1))
            reply, acked = pipe.execute(raise_on_error=False)
            if isinstance(reply, redis.exceptions.NoScriptError) and attempt == 0:
                master.script_load(script.script)  # a promoted replica, a restarted master
                continue
            for answer in (reply, acked):
                if isinstance(answer, Exception):
                    raise answer
            break
        return reply, int(acked)

    def _master_of(self, key: bytes) -> tuple[str, redis.Redis]:
        """(a name, a client) of the server that owns ``key``: the client itself unless on a cluster."""
        if not self.cluster:
            return "", self.client  # type: ignore[return-value]
        node = self.client.get_node_from_key(key)
        return node.name, self.client.get_redis_connection(node)

    def _online_replicas(self, name: str, master: redis.Redis, fresh: bool = False) -> int:
        """Replicas in sync with ``master`` (INFO's state=online), read at most every REPLICAS_REFRESH_S
        unless ``fresh``."""
        known = self._replica_counts.get(name)
        now = time.monotonic()
        if fresh or known is None or now - known[1] > REPLICAS_REFRESH_S:
            known = (online_replica_count(master), now)
            self._replica_counts[name] = known
        return known[0]

    def _refresh_slots(self) -> None:
        if self.cluster:
            with contextlib.suppress(redis.RedisError, OSError):
                self.client.nodes_manager.initialize()

    @staticmethod
    def _queue(script: Script, script_keys: list[bytes], args: list, pipe: redis.client.Pipeline) -> None:
        """Queue ``script`` on ``pipe``. A cluster's pipeline sends it whole (EVAL): unlike one server's
        pipeline it cannot load a script a node lacks (a promoted replica of Redis 7 has none)."""
        if isinstance(pipe, ClusterPipeline):
            pipe.execute_command("EVAL", script.script, len(script_keys), *script_keys, *args)
        else:
            script(keys=script_keys, args=args, client=pipe)

    def get_user_state(self, user_id: int | str, history_length: int) -> UserState:
        keyspace = self.keyspace
        tag = self.tag(user_id, keyspace)
        cached = self._profiles.get(user_id)
        pipe = self.client.pipeline(transaction=False)
        if cached is MISSING:
            pipe.hgetall(keyspace.profile_key(tag))
        pipe.lrange(keyspace.history_key(tag), 0, history_length - 1)
        pipe.smembers(keyspace.seen_key(tag))
        pipe.hgetall(keyspace.activity_key(tag))
        pipe.zscore(keys.FORGOTTEN_KEY, tag)  # by pseudonym: in a v1 keyspace the tag never matches
        replies = pipe.execute()
        if cached is MISSING:
            raw_profile = replies.pop(0)
            profile = {k.decode(): v.decode() for k, v in raw_profile.items()} if raw_profile else None
            self._profiles.put(user_id, profile)
        else:
            profile = cached  # type: ignore[assignment]
        raw_history, raw_seen, raw_activity, forgotten_at = replies
        items, events = keys.decode_history_entries(raw_history)
        # a set's members are distinct, so the array needs no de-duplication
        seen = keys.ids_of_tokens(list(raw_seen))
        activity = {k.decode(): v.decode() for k, v in raw_activity.items()} if raw_activity else None
        return UserState(profile, items, events, seen, activity, forgotten_at is not None)

    def record_event(
        self,
        event_user_id: int | str,
        event: HistoryEvent,
        history_length: int,
        event_id: str | None = None,
        dedupe_window_s: int = 0,
        checks: EventChecks | None = None,
    ) -> RecordResult:
        keyspace = self.keyspace
        user, guard = self._tags(event_user_id, keyspace)
        checks = checks or NO_RATE_LIMIT
        dedupe = event_id is not None and dedupe_window_s > 0
        length, duplicate, outcome, ratings, wait = self._durably(
            self._record_event,
            [
                keyspace.history_key(user),
                keyspace.seen_key(user),
                keyspace.ratings_key(user),
                keyspace.event_key(user, event_id if dedupe else "-"),
                keyspace.activity_key(user),
                keyspace.profile_key(user),
                keys.guard_state_key(guard),
                keys.quarantine_key(guard),
                keys.user_rate_key(guard),
            ],
            [
                keys.encode_history_entry(event.item_id, event.event_type, event.timestamp),
                # the keyspace's own length: a server configured shorter must not cut what others keep
                keyspace.history_length or history_length,
                keys.id_token(event.item_id),
                "" if event.rating is None else repr(float(event.rating)),
                int(dedupe_window_s) if dedupe else 0,
                repr(time.time()),
                checks.user_limit,
                repr(float(checks.window_s)),
                checks.quarantine_length,
            ],
        )
        return RecordResult(
            history_length=min(int(length), history_length),
            duplicate=bool(duplicate),
            outcome=outcome.decode() if isinstance(outcome, bytes) else str(outcome),
            ratings=int(ratings),
            retry_after_s=float(wait),
        )

    def consume_rates(self, windows: list[tuple[bytes, int, float]]) -> list[float | None]:
        now = repr(time.time())
        pipe = self.client.pipeline(transaction=False)  # one window per call: each its own slot
        for key, limit, window_s in windows:
            self._queue(self._consume_rate, [key], [limit, repr(float(window_s)), now], pipe)
        return [None if wait is None else float(wait) for wait in pipe.execute()]

    def set_guard_state(
        self, user_id: int | str, state: str, reason: str, score: float, by: str
    ) -> tuple[bool, str]:
        now = time.time()
        token = self.pseudonyms.of(user_id)
        applied, previous = self._set_guard_state(
            keys=[keys.guard_state_key(token)], args=[state, reason, repr(float(score)), repr(now), by]
        )
        applied = bool(applied)
        if applied:
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(keys.GUARD_FLAGS_KEY, {token: now})
            pipe.xadd(
                keys.GUARD_AUDIT_KEY,
                {"action": state, "user": token, "reason": reason, "score": repr(float(score)), "by": by},
                maxlen=AUDIT_STREAM_LENGTH,
                approximate=True,
            )
            pipe.execute()
        return applied, previous.decode() if isinstance(previous, bytes) else str(previous)

    def clear_guard(self, user_id: int | str, history_length: int, discard: bool) -> tuple[str | None, int]:
        keyspace = self.keyspace
        user, token = self._tags(user_id, keyspace)
        state, count = self._clear_guard(
            keys=[
                keys.guard_state_key(token),
                keys.quarantine_key(token),
                keyspace.history_key(user),
                keyspace.seen_key(user),
                keyspace.ratings_key(user),
            ],
            args=[keyspace.history_length or history_length, "1" if discard else "0"],
        )
        state = state.decode() if isinstance(state, bytes) else str(state)
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(keys.GUARD_FLAGS_KEY, token)
        if state:
            action = "discarded" if discard else "cleared"
            pipe.xadd(keys.GUARD_AUDIT_KEY, {"action": action, "user": token, "events": str(int(count))},
                      maxlen=AUDIT_STREAM_LENGTH, approximate=True)  # fmt: skip
        pipe.execute()
        return (state or None), int(count)

    def guard_flags(self, limit: int) -> list[GuardFlag]:
        users = [raw.decode() for raw in self.client.zrevrange(keys.GUARD_FLAGS_KEY, 0, max(limit, 1) - 1)]
        if not users:
            return []
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            pipe.hgetall(keys.guard_state_key(user))
            pipe.llen(keys.quarantine_key(user))
        replies = pipe.execute()
        flags = []
        for user, state, held in zip(users, replies[::2], replies[1::2]):
            if not state:
                continue  # cleared between the two reads
            fields = {k.decode(): v.decode() for k, v in state.items()}
            flags.append(
                GuardFlag(
                    pseudonym=user,
                    state=fields.get("state", ""),
                    reason=fields.get("reason", ""),
                    score=float(fields.get("score", 0) or 0),
                    since=float(fields.get("since", 0) or 0),
                    by=fields.get("by", ""),
                    quarantined=int(held),
                )
            )
        return flags

    def ratings(self, user_id: int | str) -> dict[int | str, float]:
        """The user's latest rating of each item rated through RecordEvent or a bulk load."""
        raw = self.client.hgetall(self.keyspace.ratings_key(self.tag(user_id)))
        items = keys.ids_of_tokens(list(raw))
        return {native_id(item): float(value) for item, value in zip(items, raw.values())}

    def impressions(self, user_id: int | str, counters: list[str]) -> dict[str, int]:
        if not counters:
            return {}
        keyspace = self.keyspace
        tag = self.tag(user_id, keyspace)
        values = self.client.mget([keyspace.impressions_key(tag, name) for name in counters])
        return {name: int(value) if value is not None else 0 for name, value in zip(counters, values)}

    def count_impressions(self, user_id: int | str, counters: list[tuple[str, float]]) -> None:
        if not counters:
            return
        keyspace = self.keyspace
        tag = self.tag(user_id, keyspace)
        pipe = self.client.pipeline(transaction=False)
        for name, window_s in counters:
            key = keyspace.impressions_key(tag, name)
            # only the first impression of a window creates the key and so sets when it ends; INCR keeps it
            pipe.set(key, 0, ex=max(int(window_s), 1), nx=True)
            pipe.incr(key)
        pipe.execute()

    def bulk_load(
        self,
        users: pd.DataFrame,
        interactions: pd.DataFrame,
        history_length: int,
        marker: str,
        chunk_users: int = 500,
        keyspace: keys.Keyspace | None = None,
    ) -> None:
        """Into ``keyspace`` (default: the one in use)."""
        keyspace = keyspace or self.keyspace
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
        spans = {native_id(u): (int(s), int(e)) for u, s, e in zip(uniq, starts, ends)}
        item_col = ordered["item_id"].to_numpy()
        ts_col = ordered["timestamp"].to_numpy()
        user_ids = users["user_id"].to_numpy()
        # the demographics, and any further profile columns (the customer-value fields) the caller joined
        extra = [c for c in users.columns if c != "user_id" and c not in USER_FEATURE_FIELDS]
        fields = (*USER_FEATURE_FIELDS, *extra)
        profiles = users[list(fields)].fillna("").astype(str).to_numpy()
        all_user_ids = np.union1d(user_ids, uniq)
        profile_of = {native_id(u): row for u, row in zip(user_ids, profiles)}
        for begin in range(0, len(all_user_ids), chunk_users):
            pipe = self.client.pipeline(transaction=False)
            for user_id in all_user_ids[begin : begin + chunk_users].tolist():
                tag = self.tag(user_id, keyspace)
                if user_id in profile_of:
                    row = profile_of[user_id]
                    mapping = dict(zip(USER_FEATURE_FIELDS, row))  # demographics, empty or not
                    mapping |= {f: v for f, v in zip(extra, row[len(USER_FEATURE_FIELDS) :]) if v}
                    pipe.hset(keyspace.profile_key(tag), mapping=mapping)
                if user_id in spans:
                    s, e = spans[user_id]
                    recent = [
                        keys.encode_history_entry(native_id(i), int(t), int(ts))
                        for i, t, ts in zip(
                            item_col[s:e][:history_length],
                            event_types[s:e][:history_length],
                            ts_col[s:e][:history_length],
                        )
                    ]
                    self._queue(
                        self._merge_history, [keyspace.history_key(tag)], [history_length, *recent], pipe
                    )
                    tokens = [keys.id_token(item) for item in item_col[s:e].tolist()]
                    pipe.sadd(keyspace.seen_key(tag), *tokens)
                    if ratings is not None:
                        # latest first in the data set: the oldest rating of an item is overwritten
                        rated = dict(zip(tokens[::-1], ratings[s:e][::-1].tolist()))
                        pipe.hset(keyspace.ratings_key(tag), mapping=rated)
            pipe.execute()
        self.client.set(keyspace.load_marker_key, marker)
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
        raw = self.client.get(self.keyspace.load_marker_key)
        return raw.decode() if raw is not None else None

    def refresh_keyspace(self) -> bool:
        """Follow ``cascade:keyspace``; True when it moved from the one in use. A keyspace of a newer key
        layout than this code reads is not followed (logged; refused when there is no keyspace in use yet):
        the old one stays until the loader drops it."""
        current = self._pointed_keyspace()
        previous = self._keyspace
        if current == previous:
            return False
        refusal = None
        if current.schema_version > keys.KEY_SCHEMA_VERSION:
            refusal = (
                f"the feature store uses key layout v{current.schema_version}, newer than this code's "
                f"v{keys.KEY_SCHEMA_VERSION}: upgrade Cascade"
            )
        elif current.pseudonymised and current.pseudonym_key_id != self.pseudonyms.key_id:
            refusal = (
                f"the feature store's user keys were made with the pseudonym key {current.pseudonym_key_id}, "
                f"this process has {self.pseudonyms.key_id}: configure privacy.pseudonym_key (or its file) "
                "as the loader's"
            )
        if refusal is not None:
            if previous is None:
                raise RuntimeError(refusal)
            if current != self._refused_keyspace:  # every probe reads it again: say so once
                logger.error("%s; not following", refusal)
                self._refused_keyspace = current
            return False
        if previous is not None:
            logger.info("feature store keyspace: %s -> %s", previous.prefix, current.prefix)
        self._keyspace = current
        self._profiles.clear()
        return previous is not None

    def _pointed_keyspace(self) -> keys.Keyspace:
        """The pointer's keyspace. No pointer: layout v1's unprefixed keyspace when it was ever loaded, else
        this layout's, with no history length yet, set for every process (the first setter wins)."""
        raw = self.client.get(keys.KEYSPACE_POINTER_KEY)
        if raw is None:
            if self.client.exists(keys.LEGACY_KEYSPACE.load_marker_key):
                return keys.LEGACY_KEYSPACE
            fresh = keys.Keyspace.for_layout(None, self.pseudonyms.key_id)
            self.client.set(keys.KEYSPACE_POINTER_KEY, fresh.to_pointer(), nx=True)
            raw = self.client.get(keys.KEYSPACE_POINTER_KEY)
        return keys.Keyspace.from_pointer(raw)

    def switch_keyspace(
        self,
        target: keys.Keyspace,
        load: Callable[[keys.Keyspace], None],
        settle_s: float,
        chunk_keys: int = 1000,
    ) -> dict[str, int]:
        """Move every user from the keyspace in use into ``target``, run ``load`` into it, point every
        process at it in one SET, and after ``settle_s`` (time for servers to follow the pointer) move what
        was recorded in the old one meanwhile, then delete the old one. The caller holds the load lock.

        No acknowledged event is lost: until the pointer moves, both copies hold it; after, a server that
        has not yet followed writes to the old keyspace and the catch-up pass moves it. A re-rating of an
        item already moved, recorded in the old keyspace in the seconds of the switch, keeps the earlier
        rating."""
        source = self.keyspace
        if target == source:
            raise ValueError(f"already in keyspace {source.prefix}")
        started = time.perf_counter()
        moved = self._move_users(source, target, first_pass=True, chunk_keys=chunk_keys)
        load(target)
        self.client.set(keys.KEYSPACE_POINTER_KEY, target.to_pointer())
        self.refresh_keyspace()
        logger.info(
            "keyspace %s is current; catching up from %s in %.1f s", target.prefix, source.prefix, settle_s
        )
        time.sleep(settle_s)
        caught_up = self._move_users(source, target, first_pass=False, chunk_keys=chunk_keys)
        dropped = self._drop(source, chunk_keys)
        logger.info(
            "moved %d users from %s to %s in %.1f s (%d again after the switch), dropped %d old keys",
            moved, source.prefix, target.prefix, time.perf_counter() - started, caught_up, dropped,
        )  # fmt: skip
        return {"users_moved": moved, "users_caught_up": caught_up, "old_keys_dropped": dropped}

    def _move_users(
        self, source: keys.Keyspace, target: keys.Keyspace, first_pass: bool, chunk_keys: int
    ) -> int:
        """Every user of ``source`` into ``target``; a user's tag changes when the source is of layout v1
        (by id) and the target pseudonymised (the guard's keys then move too)."""
        if source.pseudonymised and source.pseudonym_key_id != target.pseudonym_key_id:
            raise RuntimeError("moving users between pseudonym keys needs their ids: not supported")
        renamed = source.pseudonymised != target.pseudonymised
        if renamed and self.cluster:
            # layout v1 never ran on a cluster (its keys were not all tagged); renaming changes slots
            raise RuntimeError("a key layout v1 store is upgraded on one Redis server, not on a cluster")
        users: dict[str, str] = {}  # tag in the source -> tag in the target
        # idempotency keys, impression counters (copied with their TTL) and activity since the value load
        copied: list[tuple[bytes, str]] = []
        for key in self.client.scan_iter(match=source.user_key_pattern, count=chunk_keys):
            tag = keys.tag_of_key(key)
            if tag is None:
                continue
            if tag not in users:
                users[tag] = self.pseudonyms.of(keys.id_of_token(tag)) if renamed else tag
            if b":event:" in key or b":shown:" in key or key.endswith(b":activity"):
                copied.append((key, users[tag]))
        length = target.history_length or 0
        ordered = sorted(users.items())
        for begin in range(0, len(ordered), chunk_keys):
            pipe = self.client.pipeline(transaction=False)
            for old, new in ordered[begin : begin + chunk_keys]:
                self._queue(
                    self._move_user,
                    [
                        source.profile_key(old), source.history_key(old), source.seen_key(old),
                        source.ratings_key(old), target.profile_key(new), target.history_key(new),
                        target.seen_key(new), target.ratings_key(new),
                    ],
                    [length, "1" if first_pass else "0"],
                    pipe,
                )  # fmt: skip
            pipe.execute()
        for begin in range(0, len(copied), chunk_keys):
            self._copy_keys(
                [(key, source.moved_key(key, target, tag)) for key, tag in copied[begin : begin + chunk_keys]]
            )
        if renamed:
            self._pseudonymise_guard(chunk_keys)
        return len(users)

    def _copy_keys(self, pairs: list[tuple[bytes, bytes]]) -> None:
        """Copy each (key, new key) with its TTL; a new key that exists stays. DUMP and RESTORE rather than
        COPY, which Redis Cluster refuses across slots (a renamed user's keys change slot)."""
        pipe = self.client.pipeline(transaction=False)
        for key, _ in pairs:
            pipe.dump(key)
            pipe.pttl(key)
        replies = pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        for (_, new), dumped, ttl in zip(pairs, replies[::2], replies[1::2]):
            if dumped is not None:  # expired between the scan and the dump
                pipe.restore(new, max(int(ttl), 0), dumped)
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, redis.ResponseError) and "BUSYKEY" not in str(reply):
                raise reply

    def _pseudonymise_guard(self, chunk_keys: int) -> None:
        """The guard's keys, flags and audit records made under layout v1 (by id) -> by pseudonym."""
        moved: list[bytes] = []
        for key in self.client.scan_iter(match=keys.GUARD_USER_PATTERN, count=chunk_keys):
            tag = keys.tag_of_key(key)
            if tag is not None and not PSEUDONYM.fullmatch(tag):
                moved.append(key)
        for begin in range(0, len(moved), chunk_keys):
            batch = moved[begin : begin + chunk_keys]
            self._copy_keys([(key, self._pseudonymised_key(key)) for key in batch])
            self.client.unlink(*batch)
        flags = self.client.zrange(keys.GUARD_FLAGS_KEY, 0, -1, withscores=True)
        renamed = {m: s for m, s in flags if not PSEUDONYM.fullmatch(m.decode())}
        if renamed:
            pipe = self.client.pipeline(transaction=True)
            pipe.zadd(
                keys.GUARD_FLAGS_KEY, {self.pseudonyms.of(keys.id_of_token(m)): s for m, s in renamed.items()}
            )
            pipe.zrem(keys.GUARD_FLAGS_KEY, *renamed)
            pipe.execute()
        self.client.transaction(self._pseudonymise_audit, keys.GUARD_AUDIT_KEY)
        logger.info(
            "the guard's records of %d keys and %d flags now name users by pseudonym",
            len(moved),
            len(renamed),
        )

    def _pseudonymise_audit(self, pipe: redis.client.Pipeline) -> None:
        """Stream entries cannot be edited: the audit stream is written again, with the same entry ids, when
        any names a user by id. Run under WATCH, so that an entry a server adds meanwhile is not lost (the
        transaction is retried)."""
        entries = pipe.xrange(keys.GUARD_AUDIT_KEY)
        users = [fields.get(b"user", b"").decode() for _, fields in entries]
        if not any(user and not PSEUDONYM.fullmatch(user) for user in users):
            return
        pipe.multi()
        pipe.delete(keys.GUARD_AUDIT_KEY)
        for (entry_id, fields), user in zip(entries, users):
            if user and not PSEUDONYM.fullmatch(user):
                fields = fields | {b"user": self.pseudonyms.of(keys.id_of_token(user)).encode()}
            pipe.xadd(keys.GUARD_AUDIT_KEY, fields, id=entry_id)

    def _pseudonymised_key(self, key: bytes) -> bytes:
        tag = keys.tag_of_key(key)
        start = key.index(b"{u:") + 3
        return (
            key[:start] + self.pseudonyms.of(keys.id_of_token(tag)).encode() + key[key.index(b"}", start) :]
        )

    def forget_user(self, user_id: int | str) -> dict[str, int]:
        keyspace = self.keyspace
        tag, token = self._tags(user_id, keyspace)
        owned = [*keyspace.user_keys(tag), *keys.guard_keys(token)]
        # what expires by itself (idempotency keys, impression counters) is found by the user's pattern
        expiring = [
            key for key in self.client.scan_iter(match=keyspace.user_key_pattern_of(tag), count=1000)
            if key not in owned
        ]  # fmt: skip
        pipe = self.client.pipeline(transaction=False)
        for key in owned:
            pipe.exists(key)
        pipe.zrem(keys.GUARD_FLAGS_KEY, token)
        for key in (*owned, *expiring):  # a cluster's pipeline takes one key per UNLINK
            pipe.unlink(key)
        pipe.zadd(keys.FORGOTTEN_KEY, {token: time.time()})
        replies = pipe.execute()
        self._profiles.discard(user_id)
        names = ("profile", "history", "seen", "ratings", "activity", "guard_state", "quarantine", "rate")
        removed = {name: int(found) for name, found in zip(names, replies)}
        removed["flag"] = int(replies[len(names)])
        removed["expiring"] = len(expiring)
        return removed

    def _drop(self, keyspace: keys.Keyspace, chunk_keys: int) -> int:
        dropped = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=keyspace.user_key_pattern, count=chunk_keys):
            batch.append(key)
            if len(batch) >= chunk_keys:
                dropped += self.client.unlink(*batch)
                batch = []
        if batch:
            dropped += self.client.unlink(*batch)
        dropped += self.client.unlink(keyspace.load_marker_key, keyspace.value_scale_key)
        return dropped

    def ping(self) -> None:
        """Reading the keyspace pointer is the round trip: a loader's switch is followed at every ping, and
        the value scale of the last load is read again."""
        self.refresh_keyspace()
        raw = self.client.get(self.keyspace.value_scale_key)
        if raw != self._value_scale_raw:
            self._value_scale = ValueScale.from_json(raw) if raw is not None else None
            self._value_scale_raw = raw

    def set_value_scale(self, scale: ValueScale | None, keyspace: keys.Keyspace | None = None) -> None:
        """Record the scale a value load scored its customers on (``customers.live``)."""
        key = (keyspace or self.keyspace).value_scale_key
        if scale is None:
            self.client.delete(key)
        else:
            self.client.set(key, scale.to_json())

    @property
    def value_scale(self) -> ValueScale | None:
        """The scale of the last value load as of the last ping (None before one, or without a load)."""
        return self._value_scale

    def close(self) -> None:
        self.client.close()
