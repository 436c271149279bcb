"""What a data set says about its customers, in one shape whatever its source.

- A purchase log (CDNOW): purchases with money in them; nothing else.
- A purchase log with a companion interactions data set (the synthetic generator's): purchases, sessions,
  the customers' ratings and demographics, and the genres of what they bought.
- An interactions data set (MovieLens): ratings and demographics, no money: a rating stands in for a
  purchase, and the value to predict is activity, not spend.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cascade.core.errors import DataError
from cascade.core.privacy import Pseudonymiser
from cascade.data.dataset import Dataset
from cascade.data.transactions import KIND as TRANSACTIONS_KIND
from cascade.data.transactions import Transactions


@dataclass(frozen=True)
class CustomerLog:
    """Each table ordered by customer_id, then timestamp; absent when the source has none.

    ``purchases``: customer_id, timestamp, quantity, amount (item_id when known); ``sessions``: customer_id,
    timestamp, dwell_seconds; ``ratings``: customer_id, item_id, rating, timestamp; ``profiles``:
    customer_id, age (-1 unknown); ``item_genres``: item_id -> pipe-separated genre names."""

    name: str
    purchases: pd.DataFrame | None = None
    sessions: pd.DataFrame | None = None
    ratings: pd.DataFrame | None = None
    profiles: pd.DataFrame | None = None
    item_genres: pd.Series | None = None

    def of_customers(self, customers: np.ndarray) -> CustomerLog:
        """The rows of ``customers`` (C,) only, in every table; the items' genres whole."""

        def rows_of(table: pd.DataFrame | None) -> pd.DataFrame | None:
            return None if table is None else table[table["customer_id"].isin(customers)]

        return replace(
            self,
            purchases=rows_of(self.purchases),
            sessions=rows_of(self.sessions),
            ratings=rows_of(self.ratings),
            profiles=rows_of(self.profiles),
        )

    @property
    def value_kind(self) -> str:
        """What "value" is: "spend" where there is money, else "activity" (ratings in the period)."""
        return "spend" if self.purchases is not None else "activity"

    @property
    def events(self) -> pd.DataFrame:
        """customer_id, timestamp, amount: the events value is counted in (purchases, else ratings with
        their stars as the amount)."""
        if self.purchases is not None:
            return self.purchases[["customer_id", "timestamp", "amount"]]
        assert self.ratings is not None
        return pd.DataFrame(
            {
                "customer_id": self.ratings["customer_id"].to_numpy(),
                "timestamp": self.ratings["timestamp"].to_numpy(),
                "amount": self.ratings["rating"].to_numpy(dtype=np.float64),
            }
        )

    @classmethod
    def of_dataset(cls, dataset: Dataset) -> CustomerLog:
        ratings = dataset.interactions.rename(columns={"user_id": "customer_id"})
        ratings = ratings.sort_values(["customer_id", "timestamp"], kind="mergesort", ignore_index=True)
        return cls(
            name=dataset.name,
            ratings=ratings[["customer_id", "item_id", "rating", "timestamp"]],
            profiles=dataset.users[["user_id", "age"]].rename(columns={"user_id": "customer_id"}),
            item_genres=pd.Series(dataset.items["genres"].to_numpy(), index=dataset.items["item_id"]),
        )

    @classmethod
    def of_transactions(cls, log: Transactions, companion: Dataset | None = None) -> CustomerLog:
        if companion is None:
            return cls(name=log.name, purchases=log.table, sessions=log.sessions)
        rated = cls.of_dataset(companion)
        return cls(
            name=log.name,
            purchases=log.table,
            sessions=log.sessions,
            ratings=rated.ratings,
            profiles=rated.profiles,
            item_genres=rated.item_genres,
        )

    @classmethod
    def load(cls, data_dir: Path | str, name: str, pseudonyms: Pseudonymiser | None = None) -> CustomerLog:
        """The prepared data set ``name`` under ``data_dir``: a purchase log (with its companion data set
        when it names one) or an interactions data set; without the users their deny-lists name
        (``pseudonyms``: the key that matches them)."""
        folder = Path(data_dir) / name
        meta_path = folder / "dataset.json"
        if not meta_path.is_file():
            raise DataError(
                f"no prepared data set at {folder}: `cascade data fetch cdnow`, `cascade data fetch "
                "movielens-100k` or `cascade data synth --commerce` prepares one"
            )
        if json.loads(meta_path.read_text()).get("kind") != TRANSACTIONS_KIND:
            return cls.of_dataset(Dataset.load(folder, pseudonyms=pseudonyms))
        log = Transactions.load(folder, pseudonyms)
        companion = None
        if log.interactions_dataset:
            companion = Dataset.load(Path(data_dir) / log.interactions_dataset, pseudonyms=pseudonyms)
        return cls.of_transactions(log, companion)
