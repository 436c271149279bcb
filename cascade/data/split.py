"""The one temporal split every evaluation uses.

Per user, the latest ``holdout_fraction`` of interactions by timestamp are held out (ties broken by item id
so the split is deterministic). Held-out interactions rated at least ``positive_min_rating`` are the
positives; items seen in training are never a user's candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cascade.core.arrays import rows_by_key


@dataclass(frozen=True)
class TemporalSplit:
    train: pd.DataFrame
    test: pd.DataFrame

    def positives(self, min_rating: float) -> dict[int, np.ndarray]:
        """user_id -> held-out item ids rated at least ``min_rating`` (users without any are absent)."""
        liked = self.test[self.test["rating"] >= min_rating]
        return rows_by_key(liked["user_id"].to_numpy(), liked["item_id"].to_numpy())


def temporal_split(interactions: pd.DataFrame, holdout_fraction: float) -> TemporalSplit:
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    ordered = interactions.sort_values(["user_id", "timestamp", "item_id"], kind="mergesort")
    position = ordered.groupby("user_id", sort=False).cumcount().to_numpy()
    counts = ordered.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
    held_out_count = np.floor(counts * holdout_fraction).astype(np.int64)
    is_test = position >= counts - held_out_count
    return TemporalSplit(
        train=ordered[~is_test].reset_index(drop=True),
        test=ordered[is_test].reset_index(drop=True),
    )
