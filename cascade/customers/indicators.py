"""The value model's inputs: fourteen indicators per customer, as of a cut-off, from purchases before it.

The method's fourteen indicators come in three groups; what a purchase log can say of each:

- current value: time since the last purchase (``recency_days``), purchases and spend in the last year
  (``purchases_last_year``, ``spend_last_year``), and over all time (``frequency``, ``monetary``);
- potential value: repeat purchases (``repeat_purchases``), the length of the relationship
  (``tenure_days``), and how the customer buys: order values (``mean_order_value``, ``max_order_value``),
  units (``units``, ``mean_units_per_order``) and rhythm (``mean_days_between_purchases``);
- behaviour on the platform: recent activity (``purchases_last_90d``, ``spend_last_90d``) stands in for
  visits and time online, which a purchase log does not hold.

Brand perception, willingness to recommend, membership and the customer's own ratings have no counterpart
in CDNOW's log; they are not invented here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cascade.customers.rfm import SECONDS_PER_DAY

INDICATORS = (
    "recency_days",
    "frequency",
    "monetary",
    "purchases_last_year",
    "spend_last_year",
    "purchases_last_90d",
    "spend_last_90d",
    "repeat_purchases",
    "tenure_days",
    "mean_order_value",
    "max_order_value",
    "units",
    "mean_units_per_order",
    "mean_days_between_purchases",
)


def customer_indicators(transactions: pd.DataFrame, as_of: float) -> pd.DataFrame:
    """One row per customer with a purchase before ``as_of`` (index: customer_id, sorted), the columns of
    INDICATORS. Lines of one customer at one time are one order. Nothing at or after ``as_of`` is read."""
    past = transactions[transactions["timestamp"].to_numpy() < as_of]
    orders = past.groupby(["customer_id", "timestamp"], sort=True).agg(
        amount=("amount", "sum"), quantity=("quantity", "sum")
    )
    orders = orders.reset_index()
    age_days = (as_of - orders["timestamp"].to_numpy()) / SECONDS_PER_DAY
    orders["last_year"] = age_days <= 365
    orders["last_90d"] = age_days <= 90
    by = orders.groupby("customer_id", sort=True)
    first, last = by["timestamp"].min(), by["timestamp"].max()
    count = by.size()
    out = pd.DataFrame(
        {
            "recency_days": (as_of - last) / SECONDS_PER_DAY,
            "frequency": count,
            "monetary": by["amount"].sum(),
            "purchases_last_year": by["last_year"].sum(),
            "spend_last_year": orders["amount"]
            .where(orders["last_year"], 0.0)
            .groupby(orders["customer_id"])
            .sum(),
            "purchases_last_90d": by["last_90d"].sum(),
            "spend_last_90d": orders["amount"]
            .where(orders["last_90d"], 0.0)
            .groupby(orders["customer_id"])
            .sum(),
            "repeat_purchases": count - 1,
            "tenure_days": (as_of - first) / SECONDS_PER_DAY,
            "mean_order_value": by["amount"].mean(),
            "max_order_value": by["amount"].max(),
            "units": by["quantity"].sum(),
            "mean_units_per_order": by["quantity"].mean(),
            # a one-order customer has no rhythm yet: their tenure stands in (long, as their silence is)
            "mean_days_between_purchases": np.where(
                count > 1,
                (last - first) / SECONDS_PER_DAY / np.maximum(count - 1, 1),
                (as_of - first) / SECONDS_PER_DAY,
            ),
        }
    )
    return out[list(INDICATORS)].astype(np.float64)


def future_value(transactions: pd.DataFrame, start: float, end: float, customers: np.ndarray) -> np.ndarray:
    """(C,) money each of ``customers`` spent in [start, end): the value a model of customers as of
    ``start`` is asked to predict (0 for customers who bought nothing)."""
    stamps = transactions["timestamp"].to_numpy()
    window = transactions[(stamps >= start) & (stamps < end)]
    spent = window.groupby("customer_id")["amount"].sum()
    return spent.reindex(customers, fill_value=0.0).to_numpy(dtype=np.float64)
