"""Profile features that tell shilling profiles from genuine ones, one row per user.

From the detection literature (Chirita et al. 2005, Burke et al. 2006; Williams et al. 2007): how far a
profile's ratings stray from each item's mean, weighted by how few rate the item (RDMA, WDMA), the gap
between the items rated at the top and the rest (FMTD), the spread of the filler's deviations (MeanVar),
and how popular the rated items are. Attacks pick filler items at random, so their profiles rate far more
obscure items than people do; the deviation features catch those that copy item means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

PROFILE_FEATURES = (
    "log_length",
    "mean_rating",
    "rating_std",
    "share_top",
    "share_bottom",
    "rating_entropy",
    "rdma",
    "wdma",
    "mean_abs_deviation",
    "bias",
    "mean_correlation",
    "mean_log_popularity",
    "std_log_popularity",
    "share_obscure",
    "fmtd",
    "filler_mean_variance",
)


@dataclass(frozen=True)
class ItemReference:
    """What the features measure a profile against: per item id, its mean rating and its raters, and the
    rating scale."""

    mean: pd.Series  # item id -> mean rating
    count: pd.Series  # item id -> number of ratings
    rating_range: tuple[float, float]

    @classmethod
    def of(cls, interactions: pd.DataFrame, rating_range: tuple[float, float]) -> ItemReference:
        by_item = interactions.groupby("item_id")["rating"]
        return cls(by_item.mean().astype(np.float64), by_item.size().astype(np.float64), rating_range)

    def with_rows(self, interactions: pd.DataFrame) -> ItemReference:
        """This reference with ``interactions`` (more ratings) counted in."""
        by_item = interactions.groupby("item_id")["rating"]
        added_sum, added_count = by_item.sum().astype(np.float64), by_item.size().astype(np.float64)
        index = self.mean.index.union(added_sum.index)
        count = self.count.reindex(index, fill_value=0.0) + added_count.reindex(index, fill_value=0.0)
        total = (self.mean * self.count).reindex(index, fill_value=0.0) + added_sum.reindex(
            index, fill_value=0.0
        )
        return ItemReference(total / count, count, self.rating_range)

    @property
    def obscure_below(self) -> float:
        """Raters below which an item counts as obscure: the catalogue's median item."""
        return float(np.median(self.count.to_numpy())) if len(self.count) else 1.0

    def state(self) -> dict[str, np.ndarray]:
        """Arrays for an ``.npz`` (item ids as text, so one layout serves integer and text ids)."""
        return {
            "item_ids": self.mean.index.to_numpy().astype(str),
            "item_mean": self.mean.to_numpy(),
            "item_count": self.count.to_numpy(),
            "rating_range": np.array(self.rating_range, dtype=np.float64),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], integer_ids: bool) -> ItemReference:
        ids = state["item_ids"].astype(np.int64) if integer_ids else state["item_ids"].astype(object)
        low, high = (float(v) for v in state["rating_range"])
        return cls(
            pd.Series(state["item_mean"], index=ids), pd.Series(state["item_count"], index=ids), (low, high)
        )


def profile_features(interactions: pd.DataFrame, reference: ItemReference) -> pd.DataFrame:
    """(U, len(PROFILE_FEATURES)) float64 features indexed by user id, for every user in ``interactions``
    (columns user_id, item_id, rating). Items ``reference`` does not know count as rated once, at the
    scale's middle."""
    low, high = reference.rating_range
    middle = (low + high) / 2
    rating = interactions["rating"].to_numpy(dtype=np.float64)
    item_mean = reference.mean.reindex(interactions["item_id"]).fillna(middle).to_numpy()
    item_count = np.maximum(reference.count.reindex(interactions["item_id"]).fillna(1.0).to_numpy(), 1.0)
    deviation = rating - item_mean
    top = rating >= high
    rest = ~top
    log_pop = np.log1p(item_count)
    users, row = np.unique(interactions["user_id"].to_numpy(), return_inverse=True)
    n = np.bincount(row, minlength=len(users)).astype(np.float64)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(row, weights=values, minlength=len(users)) / n

    rating_var = np.maximum(mean(rating**2) - mean(rating) ** 2, 0.0)
    item_var = np.maximum(mean(item_mean**2) - mean(item_mean) ** 2, 0.0)
    covariance = mean(rating * item_mean) - mean(rating) * mean(item_mean)
    top_n = np.bincount(row, weights=top.astype(np.float64), minlength=len(users))
    rest_n = n - top_n
    with np.errstate(divide="ignore", invalid="ignore"):
        correlation = np.where(rating_var * item_var > 0, covariance / np.sqrt(rating_var * item_var), 0.0)
        top_mean = np.where(top_n > 0, np.bincount(row, weights=np.where(top, rating, 0.0)) / top_n, high)
        rest_mean = np.where(rest_n > 0, np.bincount(row, weights=np.where(rest, rating, 0.0)) / rest_n, high)
    columns = {
        "log_length": np.log1p(n),
        "mean_rating": mean(rating),
        "rating_std": np.sqrt(rating_var),
        "share_top": top_n / n,
        "share_bottom": mean((rating <= low).astype(np.float64)),
        "rating_entropy": _rating_entropy(row, rating, len(users)),
        "rdma": mean(np.abs(deviation) / item_count),
        "wdma": mean(np.abs(deviation) / item_count**2),
        "mean_abs_deviation": mean(np.abs(deviation)),
        "bias": mean(deviation),
        "mean_correlation": correlation,
        "mean_log_popularity": mean(log_pop),
        "std_log_popularity": np.sqrt(np.maximum(mean(log_pop**2) - mean(log_pop) ** 2, 0.0)),
        "share_obscure": mean((item_count < reference.obscure_below).astype(np.float64)),
        "fmtd": top_mean - rest_mean,
        "filler_mean_variance": np.bincount(row, weights=np.where(rest, deviation**2, 0.0))
        / np.maximum(rest_n, 1),
    }
    out = pd.DataFrame(columns, index=pd.Index(users, name="user_id"))
    return out[list(PROFILE_FEATURES)]


def _rating_entropy(row: np.ndarray, rating: np.ndarray, users: int) -> np.ndarray:
    """(U,) Shannon entropy (bits) of each user's distribution over rating values."""
    values, value = np.unique(np.round(rating, 1), return_inverse=True)
    counts = np.bincount(row * len(values) + value, minlength=users * len(values)).reshape(users, -1)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(shares > 0, shares * np.log2(shares), 0.0).sum(axis=1)
