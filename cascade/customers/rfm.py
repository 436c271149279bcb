"""Recency, frequency and monetary value, as of a cut-off time, and the current value C built from them.

The first step of the customer-value method the domain material describes: each indicator scored 1-5, then
C = R x W_R + F x W_F + M x W_M with expert weights, and customers put in five bands of C. Computed from
purchases strictly before the cut-off only, so that a value learned from them can be checked against what
the customers did after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SECONDS_PER_DAY = 86_400
LEVELS = 5  # scores 1..5, as the method has them


@dataclass(frozen=True)
class RFM:
    """Per customer (C,): ``customers`` their ids, sorted; ``recency_days`` days from the last purchase to
    the cut-off; ``frequency`` purchase occasions (distinct purchase times); ``monetary`` money spent; all
    within the window before the cut-off."""

    customers: np.ndarray
    recency_days: np.ndarray
    frequency: np.ndarray
    monetary: np.ndarray
    as_of: float

    def __len__(self) -> int:
        return len(self.customers)


def rfm_indicators(transactions: pd.DataFrame, as_of: float, window_days: float | None = None) -> RFM:
    """RFM of every customer with a purchase in [as_of - window_days, as_of) (no window: every purchase
    before ``as_of``) from a table of customer_id, timestamp, amount. Purchases at or after ``as_of`` are
    never read."""
    before = transactions["timestamp"].to_numpy() < as_of
    if window_days is not None:
        before &= transactions["timestamp"].to_numpy() >= as_of - window_days * SECONDS_PER_DAY
    past = transactions.loc[before, ["customer_id", "timestamp", "amount"]]
    grouped = past.groupby("customer_id", sort=True)
    last = grouped["timestamp"].max()
    return RFM(
        customers=last.index.to_numpy(),
        recency_days=((as_of - last.to_numpy()) / SECONDS_PER_DAY).astype(np.float64),
        frequency=grouped["timestamp"].nunique().to_numpy().astype(np.int64),
        monetary=grouped["amount"].sum().to_numpy().astype(np.float64),
        as_of=float(as_of),
    )


def quantile_scores(values: np.ndarray, higher_is_better: bool = True, levels: int = LEVELS) -> np.ndarray:
    """(C,) values -> scores 1..levels by quantile of rank: the best fifth 5, the worst 1. Ties share their
    average rank, so equal values always get equal scores."""
    if not len(values):
        return np.zeros(0, dtype=np.int64)
    ranks = pd.Series(values if higher_is_better else -np.asarray(values)).rank(method="average", pct=True)
    return np.clip(np.ceil(ranks.to_numpy() * levels), 1, levels).astype(np.int64)


@dataclass(frozen=True)
class RFMScores:
    """(C,) scores 1..5 each: recent customers score high on R, frequent on F, big spenders on M."""

    recency: np.ndarray
    frequency: np.ndarray
    monetary: np.ndarray

    @classmethod
    def of(cls, rfm: RFM, levels: int = LEVELS) -> RFMScores:
        return cls(
            recency=quantile_scores(rfm.recency_days, higher_is_better=False, levels=levels),
            frequency=quantile_scores(rfm.frequency, levels=levels),
            monetary=quantile_scores(rfm.monetary, levels=levels),
        )

    def current_value(self, weights: tuple[float, float, float]) -> np.ndarray:
        """C = R x W_R + F x W_F + M x W_M, with the weights normalised to sum to 1: C lies in [1, 5]."""
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"RFM weights must be non-negative and not all 0, got {weights}")
        w = w / w.sum()
        return w[0] * self.recency + w[1] * self.frequency + w[2] * self.monetary


def value_bands(current_value: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    """C in [1, levels] -> bands 1..levels of equal width (band 5: C >= 4.2 with five levels), the
    pre-classification of the method."""
    width = (levels - 1) / levels
    return np.clip(np.floor((np.asarray(current_value) - 1) / width) + 1, 1, levels).astype(np.int64)
