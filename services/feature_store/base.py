"""The online feature store interface. One file per backend implements it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import pandas as pd

USER_FEATURE_FIELDS = ("gender", "age", "occupation", "zip_code")


@dataclass(frozen=True)
class HistoryEvent:
    item_id: int
    event_type: int
    timestamp: int


@dataclass(frozen=True)
class UserState:
    """What serving knows about a user. ``features`` is None when the store has no profile for them."""

    features: dict[str, str] | None
    history: list[HistoryEvent]  # most recent first
    seen: frozenset[int]  # every item the user has interacted with


class OnlineFeatureStore(ABC):
    @abstractmethod
    def get_user_state(self, user_id: int, history_length: int) -> UserState:
        """Profile, the latest ``history_length`` events and the seen set, in one round trip."""

    @abstractmethod
    def record_event(self, event_user_id: int, event: HistoryEvent, history_length: int) -> int:
        """Atomically append to history (keeping the latest ``history_length``) and the seen set;
        returns the history length after the append."""

    @abstractmethod
    def bulk_load(
        self, users: pd.DataFrame, interactions: pd.DataFrame, history_length: int, marker: str
    ) -> None:
        """Replace the stored state of the given users with the dataset's, then record ``marker``.

        ``users`` has USER_FEATURE_FIELDS plus user_id; ``interactions`` has user_id, item_id, timestamp
        and optionally event_type. The marker is written last, so an interrupted load is redone."""

    @abstractmethod
    def loaded_marker(self) -> str | None:
        """The marker of the last complete bulk load, if any."""

    @abstractmethod
    def ping(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...
