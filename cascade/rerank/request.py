"""What the rules engine knows of one request beyond its candidates: who it is for, where it is shown,
when, and what the caller asked to leave out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from cascade.rerank.rules_file import UserTraits

_NONE = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class RerankRequest:
    """``seen``, ``exclude``: (S,), (E,) item indices; ``history``: (H, 3) rows (item index, event type,
    unix time) of the user's recent events, most recent first, or None; ``include_genres``,
    ``exclude_genres``: genre ids from the request (include: keep only items with one of them); ``seed``:
    seeds exploration (the same seed, the same draws); ``impressions``: pin rule name -> times this user
    was shown that pin within its window; ``offset``: positions served before this list (a later page):
    pins at those positions are not placed again."""

    seen: np.ndarray = field(default_factory=lambda: _NONE)
    exclude: np.ndarray = field(default_factory=lambda: _NONE)
    at: float = 0.0
    surface: str = ""
    user: UserTraits = field(default_factory=UserTraits)
    history: np.ndarray | None = None
    include_genres: tuple[int, ...] = ()
    exclude_genres: tuple[int, ...] = ()
    seed: int = 0
    impressions: Mapping[str, int] = field(default_factory=dict)
    offset: int = 0
