"""A customer's value between two batch loads: the batch's RFM with what they did since, on the batch's scale.

The batch (``profiles.value_profiles``) scores every customer against the whole population and records, in
a ``ValueScale``, where each score and each tier began. Online, every recorded event counts in the
customer's activity since the load; a customer with activity gets their scores again from the batch's
values plus that activity, on the batch's scale: the event makes them as recent as anyone, one event more
frequent, and a rating's stars count in M where stars stand in for money. A customer with no activity
since the load keeps the batch's scores, so nothing moves for them until the next load.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from cascade.customers.rfm import LEVELS, SECONDS_PER_DAY, RFMScores, value_bands
from cascade.customers.tiers import TIERS


def _score(value: float, starts: list[float | None], higher_is_better: bool) -> int:
    """The best level whose first value ``value`` reaches (``starts[s - 1]``: level s's least value, or
    its greatest recency; None where no customer had that level)."""
    best = 1
    for level, start in enumerate(starts, start=1):
        if start is None:
            continue
        if (value >= start) if higher_is_better else (value <= start):
            best = level
    return best


@dataclass(frozen=True)
class ValueScale:
    """Where the batch's levels began: per score level 1..5 the least frequency and money, and the greatest
    recency in days, that had it; per tier A-C the least current value C in it; the weights of C."""

    recency_days: list[float | None]
    frequency: list[float | None]
    monetary: list[float | None]
    tier_min_value: list[float]
    weights: tuple[float, float, float]

    @classmethod
    def of(
        cls,
        recency_days: np.ndarray,
        frequency: np.ndarray,
        monetary: np.ndarray,
        scores: RFMScores,
        value: np.ndarray,
        tiers: np.ndarray,
        weights: tuple[float, float, float],
    ) -> ValueScale:
        def starts(values: np.ndarray, levels: np.ndarray, reduce) -> list[float | None]:
            return [
                float(reduce(values[levels == s])) if (levels == s).any() else None
                for s in range(1, LEVELS + 1)
            ]

        return cls(
            recency_days=starts(recency_days, scores.recency, np.max),
            frequency=starts(frequency, scores.frequency, np.min),
            monetary=starts(monetary, scores.monetary, np.min),
            tier_min_value=[
                float(value[tiers == t].min()) if (tiers == t).any() else math.inf for t in range(3)
            ],
            weights=tuple(float(w) for w in weights),  # type: ignore[arg-type]
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> ValueScale:
        fields = json.loads(text)
        fields["weights"] = tuple(fields["weights"])
        return cls(**fields)


@dataclass(frozen=True)
class LiveValue:
    """A customer's value as served: RFM scores 1-5, C, its band, the tier; ``moved``: their activity since
    the batch changed it (False: the batch's own figures)."""

    recency_score: int
    frequency_score: int
    monetary_score: int
    current_value: float
    value_band: int
    tier: str
    moved: bool
    events_since_load: int


def live_value(
    profile: dict[str, str], activity: dict[str, str] | None, scale: ValueScale | None, now: float
) -> LiveValue | None:
    """The customer's value from their profile's batch fields and their activity since the load; None when
    the profile holds no value (no load wrote one). ``activity``: ``events``, ``stars``, ``last`` (unix
    seconds of the latest) counted since the load; ``now``: unix seconds."""
    if not profile.get("tier"):
        return None
    events = int(activity.get("events", 0)) if activity else 0
    batch = LiveValue(
        recency_score=int(profile.get("recency_score", 0)),
        frequency_score=int(profile.get("frequency_score", 0)),
        monetary_score=int(profile.get("monetary_score", 0)),
        current_value=float(profile.get("current_value", 0.0)),
        value_band=int(profile.get("value_band", 0)),
        tier=profile["tier"],
        moved=False,
        events_since_load=events,
    )
    if not events or scale is None or "frequency" not in profile:
        return batch
    assert activity is not None
    recency = max(now - float(activity.get("last", now)), 0.0) / SECONDS_PER_DAY
    frequency = float(profile["frequency"]) + events
    monetary = float(profile["monetary"]) + float(activity.get("stars", 0.0))
    r = _score(recency, scale.recency_days, higher_is_better=False)
    f = _score(frequency, scale.frequency, higher_is_better=True)
    m = _score(monetary, scale.monetary, higher_is_better=True)
    value = float(RFMScores(np.array([r]), np.array([f]), np.array([m])).current_value(scale.weights)[0])
    tier = next((TIERS[t] for t, least in enumerate(scale.tier_min_value) if value >= least), TIERS[3])
    # the batch's tier is the floor: quartile ties at a tier's edge were broken by customer order, and
    # activity never makes a customer less valuable
    tier = min(tier, batch.tier)
    return LiveValue(
        recency_score=max(r, batch.recency_score),
        frequency_score=max(f, batch.frequency_score),
        monetary_score=max(m, batch.monetary_score),
        current_value=max(value, batch.current_value),
        value_band=max(int(value_bands(np.array([value]))[0]), batch.value_band),
        tier=tier,
        moved=tier != batch.tier or value > batch.current_value,
        events_since_load=events,
    )
