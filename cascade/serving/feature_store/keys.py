"""Redis key schema, versioned so that a layout change never reads old data as new.

Each user's keys share the hash tag ``{u:<id>}``: on Redis Cluster they land in one slot, so the
MULTI/EXEC of RecordEvent stays valid there.

    cascade:v1:{u:42}:profile   hash  gender, age, occupation, zip_code
    cascade:v1:{u:42}:history   list  "<item_id>:<event_type>:<timestamp>", most recent first
    cascade:v1:{u:42}:seen      set   item ids the user has interacted with
    cascade:v1:{u:42}:ratings   hash  item id -> the rating of the user's latest RATE event on it
    cascade:v1:{u:42}:event:<event_id>   str  an acknowledged event's idempotency key, expiring after the
                                              dedupe window
    cascade:v1:meta:load        str   marker of the last complete bulk load
    cascade:v1:meta:load-lock   str   held (with a TTL) by the one process loading the data set
"""

from __future__ import annotations

import numpy as np

KEY_SCHEMA_VERSION = 1
_PREFIX = f"cascade:v{KEY_SCHEMA_VERSION}"


def profile_key(user_id: int) -> bytes:
    return f"{_PREFIX}:{{u:{user_id}}}:profile".encode()


def history_key(user_id: int) -> bytes:
    return f"{_PREFIX}:{{u:{user_id}}}:history".encode()


def seen_key(user_id: int) -> bytes:
    return f"{_PREFIX}:{{u:{user_id}}}:seen".encode()


def ratings_key(user_id: int) -> bytes:
    return f"{_PREFIX}:{{u:{user_id}}}:ratings".encode()


def event_key(user_id: int, event_id: str) -> bytes:
    """The idempotency key of one event: in the user's slot, so the recording script may touch it."""
    return f"{_PREFIX}:{{u:{user_id}}}:event:{event_id}".encode()


LOAD_MARKER_KEY = f"{_PREFIX}:meta:load".encode()
LOAD_LOCK_KEY = f"{_PREFIX}:meta:load-lock".encode()


def encode_history_entry(item_id: int, event_type: int, timestamp: int) -> bytes:
    return f"{item_id}:{event_type}:{timestamp}".encode()


def decode_history_entries(raw: list[bytes]) -> np.ndarray:
    """Stored entries -> (H, 3) int64 rows (item_id, event_type, timestamp), in their order. One parse for
    the whole list, not a split, three int() calls and an object per entry, fifty times a request."""
    fields = b":".join(raw).split(b":") if raw else []
    if len(fields) != 3 * len(raw):
        raise ValueError(f"history entries must be item_id:event_type:timestamp, got {raw[:3]!r}...")
    return np.array(fields, dtype=np.int64).reshape(len(raw), 3)
