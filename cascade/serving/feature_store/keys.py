"""Redis key schema: a keyspace per key layout and history length, switched atomically.

Each user's keys share the hash tag ``{u:<tag>}``: on Redis Cluster they land in one slot, so the scripts
that record an event or move a user to a new keyspace stay valid there. The tag is the user's pseudonym
(``cascade.core.privacy``: "p-" and 32 hex digits of a keyed hash), so that no key names a user to whoever
reads the store without the key; layout v1 tagged keys with the id itself and is moved to v2 by the next
load. Item ids appear in keys and history entries as tokens (``id_token``): as they are when made of
letters, digits, ".", "_" and "-" (every integer id), else "~" and their UTF-8 in unpadded base64url, so
that no id can break a key's hash tag or an entry's fields. Under a keyspace's prefix, e.g.
``cascade:v2:h50`` (``<P>`` below is a user's pseudonym):

    <prefix>:{u:<P>}:profile  hash  gender, age, occupation, zip_code
    <prefix>:{u:<P>}:history   list  "<item token>:<event_type>:<timestamp>", most recent first, at most the
                                    keyspace's history length
    <prefix>:{u:<P>}:seen      set   item tokens of the items the user has interacted with
    <prefix>:{u:<P>}:ratings   hash  item token -> the rating of the user's latest RATE event on it
    <prefix>:{u:<P>}:event:<event_id>   str  an acknowledged event's idempotency key, expiring after the
                                            dedupe window
    <prefix>:{u:<P>}:shown:<counter>    str  impressions of a rules file's capped pin, expiring at the end
                                            of the window its first impression opened
    <prefix>:meta:load        str   marker of the last complete bulk load into this keyspace

Outside any keyspace:

    cascade:keyspace          str   JSON of the keyspace every process reads and writes, with the id of
                                    the pseudonym key its tags were made with (absent: the first layout,
                                    ``cascade:v1``, when its load marker exists; else set by the first
                                    process to ``cascade:v2`` with no history length yet)
    cascade:v1:meta:load-lock str   held (with a TTL) by the one process loading or migrating

The guard's keys, kept across keyspaces (a flag outlives a reload of the data set):

    cascade:guard:{u:<P>}:state       hash  state (flagged or blocked), reason, score, since, by
    cascade:guard:{u:<P>}:quarantine  list  "<history entry>|<rating or ''>|<recorded at>", latest first
    cascade:guard:{u:<P>}:rate        hash  the user's sliding-window counter: bucket, count, previous
    cascade:guard:rate:client:<token> hash a client's counter (its API key id, or its address)
    cascade:guard:rate:item:<token>   hash an item's counter, over every user
    cascade:guard:flags              zset  user pseudonym -> when flagged or blocked: what the guard lists
    cascade:guard:audit              stream the guard's decisions, capped
    cascade:privacy:forgotten        zset  pseudonym -> when ForgetUser removed that user's keys

A new layout or history length gets a new keyspace: the loader copies every user into it, loads the data
set, then points ``cascade:keyspace`` at it in one SET; servers follow the pointer within seconds.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

KEY_SCHEMA_VERSION = 2  # v2: user tags are pseudonyms
PSEUDONYMISED_FROM = 2  # the first layout whose user tags are pseudonyms
KEYSPACE_POINTER_KEY = b"cascade:keyspace"
LOAD_LOCK_KEY = b"cascade:v1:meta:load-lock"
_USER_TAG = re.compile(rb"\{u:([^}]+)\}")
_PLAIN_ID = re.compile(r"[A-Za-z0-9._-]+")
ENCODED = "~"  # starts the token of an id that is not plain


@dataclass(frozen=True)
class Keyspace:
    """Where a store's user keys live. ``history_length`` is what histories are cut to on write (None for
    the first layout, which did not record it: each writer used its own)."""

    prefix: str
    schema_version: int = KEY_SCHEMA_VERSION
    history_length: int | None = None
    pseudonym_key_id: str | None = None  # the key the tags were made with (layouts from v2)

    @classmethod
    def for_layout(cls, history_length: int | None, pseudonym_key_id: str) -> Keyspace:
        """The keyspace of this code's key layout with histories of ``history_length`` (None: not loaded
        yet, each writer cuts to its own) and tags made with the key ``pseudonym_key_id``."""
        suffix = "" if history_length is None else f":h{history_length}"
        return cls(
            f"cascade:v{KEY_SCHEMA_VERSION}{suffix}", KEY_SCHEMA_VERSION, history_length, pseudonym_key_id
        )

    @classmethod
    def from_pointer(cls, raw: bytes | None) -> Keyspace:
        if raw is None:
            return LEGACY_KEYSPACE
        fields = json.loads(raw)
        return cls(
            fields["prefix"],
            int(fields["schema_version"]),
            fields.get("history_length"),
            fields.get("pseudonym_key_id"),
        )

    def to_pointer(self) -> bytes:
        return json.dumps(
            {
                "prefix": self.prefix,
                "schema_version": self.schema_version,
                "history_length": self.history_length,
                "pseudonym_key_id": self.pseudonym_key_id,
            }
        ).encode()

    @property
    def pseudonymised(self) -> bool:
        return self.schema_version >= PSEUDONYMISED_FROM

    def _user(self, tag: str, name: str) -> bytes:
        return f"{self.prefix}:{{u:{tag}}}:{name}".encode()

    # Every user key takes the user's tag: their pseudonym, or in layout v1 their id_token.
    def profile_key(self, tag: str) -> bytes:
        return self._user(tag, "profile")

    def history_key(self, tag: str) -> bytes:
        return self._user(tag, "history")

    def seen_key(self, tag: str) -> bytes:
        return self._user(tag, "seen")

    def ratings_key(self, tag: str) -> bytes:
        return self._user(tag, "ratings")

    def event_key(self, tag: str, event_id: str) -> bytes:
        """The idempotency key of one event: in the user's slot, so the recording script may touch it."""
        return self._user(tag, f"event:{event_id}")

    def impressions_key(self, tag: str, counter: str) -> bytes:
        return self._user(tag, f"shown:{counter}")

    def activity_key(self, tag: str) -> bytes:
        """What the user did since the last value load: events, stars, last (``customers.live``)."""
        return self._user(tag, "activity")

    def user_keys(self, tag: str) -> list[bytes]:
        """The user's keys that do not expire by themselves (idempotency keys and impression counters do)."""
        return [self.profile_key(tag), self.history_key(tag), self.seen_key(tag), self.ratings_key(tag),
                self.activity_key(tag)]  # fmt: skip

    def user_key_pattern_of(self, tag: str) -> bytes:
        """A SCAN pattern matching every key of one user in this keyspace."""
        return f"{self.prefix}:{{u:{tag}}}:*".encode()

    @property
    def value_scale_key(self) -> bytes:
        return f"{self.prefix}:meta:value-scale".encode()

    @property
    def load_marker_key(self) -> bytes:
        return f"{self.prefix}:meta:load".encode()

    @property
    def user_key_pattern(self) -> bytes:
        """A SCAN pattern matching every user key of this keyspace, and no other keyspace's."""
        return f"{self.prefix}:{{u:*}}:*".encode()

    def moved_key(self, key: bytes, to: Keyspace, tag: str) -> bytes:
        """``key`` of this keyspace under ``to``'s prefix, for the user tagged ``tag`` there."""
        rest = key[len(self.prefix) :]
        return to.prefix.encode() + b":{u:" + tag.encode() + rest[rest.index(b"}") :]


LEGACY_KEYSPACE = Keyspace("cascade:v1", 1, None)
GUARD_FLAGS_KEY = b"cascade:guard:flags"
GUARD_AUDIT_KEY = b"cascade:guard:audit"
GUARD_USER_PATTERN = b"cascade:guard:{u:*}:*"
FORGOTTEN_KEY = b"cascade:privacy:forgotten"


# The guard's user keys take the user's pseudonym (they outlive keyspaces, and were made before v2 with the
# id's token: a load into a v2 keyspace moves them).
def _guard_user(tag: str, name: str) -> bytes:
    return f"cascade:guard:{{u:{tag}}}:{name}".encode()


def guard_state_key(tag: str) -> bytes:
    return _guard_user(tag, "state")


def quarantine_key(tag: str) -> bytes:
    return _guard_user(tag, "quarantine")


def user_rate_key(tag: str) -> bytes:
    return _guard_user(tag, "rate")


def guard_keys(tag: str) -> list[bytes]:
    return [guard_state_key(tag), quarantine_key(tag), user_rate_key(tag)]


def rate_key(kind: str, name: int | str) -> bytes:
    """The sliding-window counter of one client or item (``kind``: client or item)."""
    return f"cascade:guard:rate:{kind}:{id_token(name)}".encode()


def id_token(value: Any) -> str:
    """How an id appears in keys and entries: itself when plain, else "~" + base64url of its UTF-8."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    if _PLAIN_ID.fullmatch(text):
        return text
    return ENCODED + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def id_of_token(token: bytes | str) -> str:
    """The id a token stands for, as text."""
    text = token.decode() if isinstance(token, bytes) else token
    if not text.startswith(ENCODED):
        return text
    body = text[1:]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()


def ids_of_tokens(tokens: list[bytes]) -> np.ndarray:
    """Tokens -> int64 ids when every token is an integer (one conversion), else their ids as object str."""
    if not tokens:
        return np.zeros(0, dtype=np.int64)
    try:
        return np.array(tokens, dtype=np.int64)
    except ValueError:
        return np.array([id_of_token(token) for token in tokens], dtype=object)


def tag_of_key(key: bytes) -> str | None:
    """The user tag inside a user key (a pseudonym, or in layout v1 an id's token)."""
    match = _USER_TAG.search(key)
    return match.group(1).decode() if match else None


def encode_history_entry(item_id: int | str, event_type: int, timestamp: int) -> bytes:
    return f"{id_token(item_id)}:{event_type}:{timestamp}".encode()


def decode_history_entries(raw: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Stored entries -> their item ids (H,) (int64 when all are integers, else object str) and (H, 2)
    int64 rows (event_type, timestamp), in their order. Integer items take one parse for the whole list, not
    a split, three int() calls and an object per entry, fifty times a request."""
    fields = b":".join(raw).split(b":") if raw else []
    if len(fields) != 3 * len(raw):
        raise ValueError(f"history entries must be item:event_type:timestamp, got {raw[:3]!r}...")
    events = np.array(fields[1::3] + fields[2::3], dtype=np.int64).reshape(2, len(raw)).T
    return ids_of_tokens(fields[0::3]), np.ascontiguousarray(events)
