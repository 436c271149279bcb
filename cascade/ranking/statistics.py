"""Per-item statistics over a window of interactions, the engineered half of the ranking features.

Everything here is computed from the interactions it is given and nothing else, so the caller decides the
window: ranking examples are built from the nested split's training part, serving from the whole training
part. Windowed counts are causal: asked at time t, they only count events at or before t.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from cascade.core.engines import LOCAL, OfflineEngine, PartitionedJob, PartResult, contiguous_parts
from cascade.core.schema import FeatureSchema

_TIME_BITS = 32  # seconds since the first event fit in 32 bits for 136 years
_SMOOTHING = 5.0  # pseudo-interactions pulling a rarely rated item's mean towards the global mean
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class ItemStatistics:
    """Counts (N,), rating sums (N,), positive counts (N,) and first-seen times (N,) per item index, and
    every event as a sorted int64 key ``item << 32 | seconds since start`` for causal windowed counts."""

    counts: np.ndarray
    rating_sums: np.ndarray
    positives: np.ndarray
    first_seen: np.ndarray  # seconds since ``start``; +inf for items never seen
    event_keys: np.ndarray
    start: float  # unix time of the first event
    end: float  # unix time of the last event
    recent_window_days: float

    @classmethod
    def from_interactions(
        cls,
        schema: FeatureSchema,
        interactions: pd.DataFrame,
        positive_min_rating: float,
        recent_window_days: float,
        engine: OfflineEngine = LOCAL,
    ) -> ItemStatistics:
        """Statistics of ``interactions``; ``engine`` counts parts of them where it runs jobs, and their
        counts add up to the same statistics."""
        # the items are indexed once, here: the window's start is over known items, and the parts need it
        items = schema.item_index(interactions["item_id"].to_numpy())
        times = interactions["timestamp"].to_numpy(dtype=np.float64)[items > 0]
        start = float(times.min()) if len(times) else 0.0
        end = float(times.max()) if len(times) else 0.0
        job = _CountItemEvents(schema.num_items, start, positive_min_rating)
        columns = pd.DataFrame(
            {
                "item": items,
                "timestamp": interactions["timestamp"].to_numpy(),
                "rating": interactions["rating"].to_numpy(),
            }
        )
        parts = [columns.iloc[rows] for rows in contiguous_parts(len(columns), engine.partitions)]
        n = schema.num_items
        counts, rating_sums, positives = np.zeros(n), np.zeros(n), np.zeros(n)
        first_seen = np.full(n, np.inf)
        keys = []
        for part in engine.map_parts(job, parts):
            seen = part["items"]
            counts[seen] += part["counts"]
            rating_sums[seen] += part["rating_sums"]
            positives[seen] += part["positives"]
            np.minimum.at(first_seen, seen, part["first_seen"])
            keys.append(part["event_keys"])
        return cls(
            counts=counts,
            rating_sums=rating_sums,
            positives=positives,
            first_seen=first_seen,
            event_keys=np.sort(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64),
            start=start,
            end=end,
            recent_window_days=recent_window_days,
        )

    @property
    def num_items(self) -> int:
        return len(self.counts)

    def clamp_time(self, at: float | None) -> float:
        """Statistics describe their window only: a request after it is answered as of the window's end."""
        return self.end if at is None else min(float(at), self.end)

    def _events_through(self, items: np.ndarray, at: float) -> np.ndarray:
        """Position in ``event_keys`` just past each item's last event at or before ``at`` (C,); before
        the first event of the window it is the item's first position, so differences count events."""
        keys = items.astype(np.int64) << _TIME_BITS
        if at < self.start:
            return np.searchsorted(self.event_keys, keys, side="left")
        # event offsets are whole seconds, so "at or before at" is "at or before floor(at)"
        return np.searchsorted(self.event_keys, keys | np.int64(at - self.start), side="right")

    def counts_before(self, items: np.ndarray, at: float) -> np.ndarray:
        """Events of each item (C,) at or before unix time ``at`` -> (C,) float64."""
        return (self._events_through(items, at) - self._events_through(items, self.start - 1)).astype(
            np.float64
        )

    def recent_counts(self, items: np.ndarray, at: float) -> np.ndarray:
        """Events of each item (C,) in the ``recent_window_days`` before ``at`` -> (C,) float64."""
        if at == self.end:  # every served request (clamp_time): one gather, not two binary searches
            return self._recent_counts_at_end[items]
        return self._recent_counts_searched(items, at)

    def _recent_counts_searched(self, items: np.ndarray, at: float) -> np.ndarray:
        window = self.recent_window_days * SECONDS_PER_DAY
        return (self._events_through(items, at) - self._events_through(items, at - window)).astype(np.float64)

    @cached_property
    def _recent_counts_at_end(self) -> np.ndarray:
        """(num_items,) recent counts as of the window's end. Serving asks for this for hundreds of random
        items per request, and searching the event keys for each is a run of cache misses."""
        return self._recent_counts_searched(np.arange(self.num_items), self.end)

    # the global means are fixed once the statistics are; requests must not pay O(num_items) for them
    @cached_property
    def _mean_rating(self) -> float:
        return float(self.rating_sums.sum() / max(self.counts.sum(), 1.0))

    @cached_property
    def _positive_share(self) -> float:
        return float(self.positives.sum() / max(self.counts.sum(), 1.0))

    def mean_rating(self, items: np.ndarray) -> np.ndarray:
        """Smoothed mean rating (C,), centred on the global mean so that 0 means 'typical'."""
        overall = self._mean_rating
        smoothed = (self.rating_sums[items] + _SMOOTHING * overall) / (self.counts[items] + _SMOOTHING)
        return smoothed - overall

    def rating_on_scale(self, items: np.ndarray) -> np.ndarray:
        """Smoothed mean rating (C,) on the data set's own scale; NaN for items never rated."""
        rated = self.counts[items] > 0
        return np.where(rated, self.mean_rating(items) + self._mean_rating, np.nan)

    def positive_rate(self, items: np.ndarray) -> np.ndarray:
        """Smoothed share of an item's ratings that are positive (C,)."""
        overall = self._positive_share
        return (self.positives[items] + _SMOOTHING * overall) / (self.counts[items] + _SMOOTHING)

    def age_days(self, items: np.ndarray, at: float) -> np.ndarray:
        """Days between an item's first event and ``at`` (C,); 0 for items not seen by then."""
        age = (at - self.start - self.first_seen[items]) / SECONDS_PER_DAY
        return np.where(np.isfinite(age) & (age > 0), age, 0.0)

    def save(self, path: Path) -> None:
        with open(path, "wb") as fh:
            np.savez(
                fh,
                counts=self.counts,
                rating_sums=self.rating_sums,
                positives=self.positives,
                first_seen=self.first_seen,
                event_keys=self.event_keys,
                scalars=np.array([self.start, self.end, self.recent_window_days]),
            )

    @classmethod
    def load(cls, path: Path) -> ItemStatistics:
        with np.load(path, allow_pickle=False) as raw:
            start, end, window = raw["scalars"].tolist()
            return cls(
                counts=raw["counts"],
                rating_sums=raw["rating_sums"],
                positives=raw["positives"],
                first_seen=raw["first_seen"],
                event_keys=raw["event_keys"],
                start=start,
                end=end,
                recent_window_days=window,
            )


class _CountItemEvents(PartitionedJob):
    """One part of the interactions (item indices, 0 for unknown items) -> its items (K,), their counts,
    rating sums, positive counts and first-seen offsets (K,) each, and its event keys (E,) sorted. Offsets
    count from the whole window's ``start``, so the parts' keys and first-seen times are the whole's."""

    name = "item statistics"

    def __init__(self, num_items: int, start: float, positive_min_rating: float):
        self.num_items, self.start, self.positive_min_rating = num_items, start, positive_min_rating

    def run_part(self, part: dict[str, np.ndarray]) -> PartResult:
        items = part["item"]
        known = items > 0
        items = items[known]
        ratings = part["rating"].astype(np.float64)[known]
        offsets = (part["timestamp"].astype(np.float64)[known] - self.start).astype(np.int64)
        n = self.num_items
        counts = np.bincount(items, minlength=n).astype(np.float64)
        first_seen = np.full(n, np.inf)
        np.minimum.at(first_seen, items, offsets.astype(np.float64))
        seen = np.flatnonzero(counts)
        return {
            "items": seen,
            "counts": counts[seen],
            "rating_sums": np.bincount(items, weights=ratings, minlength=n)[seen],
            "positives": np.bincount(items, weights=ratings >= self.positive_min_rating, minlength=n)[seen],
            "first_seen": first_seen[seen],
            "event_keys": np.sort((items.astype(np.int64) << _TIME_BITS) | offsets),
        }
