"""The online feature store interface. One file per backend implements it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cascade.customers.live import ValueScale

USER_FEATURE_FIELDS = ("gender", "age", "occupation", "zip_code")


@dataclass(frozen=True)
class HistoryEvent:
    item_id: int | str  # the item's external id (canonical: as the served schema spells it)
    event_type: int
    timestamp: int
    rating: float | None = None  # the value of a RATE event


# what became of an event the guard checked (``RecordResult.outcome``)
RECORDED = "recorded"
QUARANTINED = "quarantined"  # stored apart: the user is flagged
BLOCKED = "blocked"  # refused: the user is blocked
LIMITED = "limited"  # refused: the user's rate limit
FLAGGED = "flagged"  # a guard state (beside BLOCKED): the user's events go to quarantine


@dataclass(frozen=True)
class RecordResult:
    history_length: int  # the user's history length after the event
    duplicate: bool  # the event's id was already recorded within the dedupe window: nothing changed
    outcome: str = RECORDED
    ratings: int = 0  # how many items the user has rated, after the event (when the guard checked it)
    retry_after_s: float = 0.0  # LIMITED: when the user's window has room again


@dataclass(frozen=True)
class EventChecks:
    """What the guard asks of one recording: refuse it for a blocked user, or past ``user_limit`` events in
    the sliding ``window_s`` (0: no limit); store it apart, in a quarantine of at most
    ``quarantine_length`` events, for a flagged user."""

    user_limit: int
    window_s: float
    quarantine_length: int


@dataclass(frozen=True)
class GuardFlag:
    """A flagged or blocked user, by pseudonym (the store keeps no ids): ``state`` (FLAGGED or BLOCKED),
    why, by what score, since when (unix seconds), by whom (the detector, or an operator's key), and the
    events held in quarantine."""

    pseudonym: str
    state: str
    reason: str
    score: float
    since: float
    by: str
    quarantined: int


@dataclass(frozen=True)
class UserState:
    """What serving knows about a user. ``features`` is None when the store has no profile for them.

    Arrays, not lists of events, because serving uses them as arrays. Item ids are int64 when every one
    read is an integer, else object str (``keys.ids_of_tokens``): ``history_items`` (H,) most recent first,
    ``history_events`` (H, 2) int64 rows (event_type, timestamp) beside them; ``seen`` (S,) every item the
    user has interacted with, each once, in no particular order; ``activity`` what they did since the
    last value load; ``forgotten`` whether the user was once forgotten (``forget_user``): what models
    learnt of them before is not theirs to use, though what they did since is."""

    features: dict[str, str] | None
    history_items: np.ndarray
    history_events: np.ndarray
    seen: np.ndarray
    # counted since the last value load: events, stars, last (``customers.live``); None when nothing was
    activity: dict[str, str] | None = None
    forgotten: bool = False

    @classmethod
    def nobody(cls) -> UserState:
        none = np.zeros(0, dtype=np.int64)
        return cls(None, none, np.zeros((0, 2), dtype=np.int64), none)


class OnlineFeatureStore(ABC):
    @abstractmethod
    def get_user_state(self, user_id: int | str, history_length: int) -> UserState:
        """Profile, the latest ``history_length`` events and the seen set, in one round trip."""

    @abstractmethod
    def record_event(
        self,
        event_user_id: int | str,
        event: HistoryEvent,
        history_length: int,
        event_id: str | None = None,
        dedupe_window_s: int = 0,
        checks: EventChecks | None = None,
    ) -> RecordResult:
        """Atomically append to history (keeping the latest ``history_length``), the seen set and, for a
        rating, the user's ratings: all of it or nothing. With an ``event_id`` already recorded in the last
        ``dedupe_window_s`` seconds, nothing changes and the result says ``duplicate``. With ``checks``, the
        guard's: a blocked user's event is refused (outcome BLOCKED), one past the user's rate limit too
        (LIMITED), and a flagged user's is stored in their quarantine instead (QUARANTINED)."""

    @abstractmethod
    def consume_rates(self, windows: list[tuple[bytes, int, float]]) -> list[float | None]:
        """Count one event against each (key, limit, window seconds) sliding window, in one round trip:
        per window, None when it fitted within its limit, else the seconds until it would (that window
        counted nothing)."""

    @abstractmethod
    def set_guard_state(
        self, user_id: int | str, state: str, reason: str, score: float, by: str
    ) -> tuple[bool, str]:
        """Flag (FLAGGED) or block (BLOCKED) a user -> (whether it changed: flagging a blocked user does
        not, the state before or "")."""

    @abstractmethod
    def clear_guard(self, user_id: int | str, history_length: int, discard: bool) -> tuple[str | None, int]:
        """Lift a user's flag or block: their quarantined events join their history, seen set and ratings
        in order (or are dropped, with ``discard``). -> (the state lifted or None, events released or
        dropped)."""

    @abstractmethod
    def guard_flags(self, limit: int) -> list[GuardFlag]:
        """The flagged and blocked users, the latest first, at most ``limit``."""

    @abstractmethod
    def forget_user(self, user_id: int | str) -> dict[str, int]:
        """Delete everything the store holds of one user (profile with its value tier, history, seen set,
        ratings, activity, idempotency keys, impression counters, the guard's state, quarantine and
        counter, the flag) and note their pseudonym as forgotten -> how many of each kind went."""

    @abstractmethod
    def bulk_load(
        self, users: pd.DataFrame, interactions: pd.DataFrame, history_length: int, marker: str
    ) -> None:
        """Merge the data set's users into the store, then record ``marker``: profiles are overwritten,
        each history becomes the latest ``history_length`` of the stored and the data set's events
        together (by timestamp), seen sets grow. Nothing recorded online is deleted, and an event recorded
        while the load runs is kept.

        ``users`` has USER_FEATURE_FIELDS plus user_id; ``interactions`` has user_id, item_id, timestamp
        and optionally event_type. The marker is written last, so an interrupted load is redone."""

    @abstractmethod
    def impressions(self, user_id: int | str, counters: list[str]) -> dict[str, int]:
        """How many impressions each of the named counters holds for the user (0 when none or expired)."""

    @abstractmethod
    def count_impressions(self, user_id: int | str, counters: list[tuple[str, float]]) -> None:
        """Add one impression to each (name, window seconds) counter of the user. A counter's window starts
        at its first impression: it expires that long after, and counts from zero again."""

    @abstractmethod
    def loaded_marker(self) -> str | None:
        """The marker of the last complete bulk load, if any."""

    @property
    def value_scale(self) -> ValueScale | None:
        """The scale the last value load scored customers on, as of the last ping (``customers.live``)."""
        return None

    def shard_of(self, user_id: int | str) -> str | None:
        """The name of the node holding ``user_id``'s keys when the store is sharded (from what the client
        knows, without a round trip), else None: the caller's breakers go per node."""
        return None

    @abstractmethod
    def ping(self) -> None:
        """Reach the store, raising when it cannot answer, and pick up what other processes changed about
        where its data lives (Redis: the keyspace pointer). The server's periodic probe."""

    @abstractmethod
    def close(self) -> None: ...
