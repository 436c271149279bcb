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
    frame = pd.DataFrame(
        {
            "user": interactions["user_id"].to_numpy(),
            "rating": rating,
            "rating_sq": rating**2,
            "top": top.astype(np.float64),
            "bottom": (rating <= low).astype(np.float64),
            "rdma": np.abs(deviation) / item_count,
            "wdma": np.abs(deviation) / item_count**2,
            "abs_dev": np.abs(deviation),
            "dev": deviation,
            "mean": item_mean,
            "mean_sq": item_mean**2,
            "rating_x_mean": rating * item_mean,
            "log_pop": np.log1p(item_count),
            "log_pop_sq": np.log1p(item_count) ** 2,
            "obscure": (item_count < reference.obscure_below).astype(np.float64),
            "top_rating": np.where(top, rating, 0.0),
            "rest_rating": np.where(top, 0.0, rating),
            "rest": (~top).astype(np.float64),
            "rest_dev_sq": np.where(top, 0.0, deviation**2),
        }
    )
    sums = frame.groupby("user", sort=True).sum()
    n = frame.groupby("user", sort=True).size().to_numpy(dtype=np.float64)
    mean = lambda column: sums[column].to_numpy() / n  # noqa: E731
    rating_var = np.maximum(mean("rating_sq") - mean("rating") ** 2, 0.0)
    item_var = np.maximum(mean("mean_sq") - mean("mean") ** 2, 0.0)
    covariance = mean("rating_x_mean") - mean("rating") * mean("mean")
    with np.errstate(divide="ignore", invalid="ignore"):
        correlation = np.where(rating_var * item_var > 0, covariance / np.sqrt(rating_var * item_var), 0.0)
        top_n, rest_n = sums["top"].to_numpy(), sums["rest"].to_numpy()
        top_mean = np.where(top_n > 0, sums["top_rating"].to_numpy() / np.maximum(top_n, 1), high)
        rest_mean = np.where(rest_n > 0, sums["rest_rating"].to_numpy() / np.maximum(rest_n, 1), high)
    out = pd.DataFrame(index=sums.index)
    out["log_length"] = np.log1p(n)
    out["mean_rating"] = mean("rating")
    out["rating_std"] = np.sqrt(rating_var)
    out["share_top"] = mean("top")
    out["share_bottom"] = mean("bottom")
    out["rating_entropy"] = _rating_entropy(frame["user"], rating, sums.index)
    out["rdma"] = mean("rdma")
    out["wdma"] = mean("wdma")
    out["mean_abs_deviation"] = mean("abs_dev")
    out["bias"] = mean("dev")
    out["mean_correlation"] = correlation
    out["mean_log_popularity"] = mean("log_pop")
    out["std_log_popularity"] = np.sqrt(np.maximum(mean("log_pop_sq") - mean("log_pop") ** 2, 0.0))
    out["share_obscure"] = mean("obscure")
    out["fmtd"] = top_mean - rest_mean
    out["filler_mean_variance"] = sums["rest_dev_sq"].to_numpy() / np.maximum(rest_n, 1)
    out.index.name = "user_id"
    return out[list(PROFILE_FEATURES)]


def _rating_entropy(users: pd.Series, rating: np.ndarray, index: pd.Index) -> np.ndarray:
    """Shannon entropy (bits) of each user's distribution over rating values."""
    counts = pd.crosstab(users.to_numpy(), np.round(rating, 1)).reindex(index).fillna(0.0).to_numpy()
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.nansum(np.where(shares > 0, shares * np.log2(shares), 0.0), axis=1)
