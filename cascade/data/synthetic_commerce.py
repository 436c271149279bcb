"""Seeded purchases and sessions for a synthetic data set's users, with a latent value to find.

Each user gets a latent value z ~ N(0, 1) that nothing stores. It sets, with noise of its own for each:

- how often they buy (a purchase rate per week, gamma distributed around a mean that grows with z), and how
  soon they stop (after each purchase they leave for good with a probability that falls with z): the
  buy-till-you-die process BG/NBD assumes;
- how much they buy: each order is an item the user rated, at its price, times a quantity that grows
  with z;
- how they use the platform: sessions at a rate a few times their purchase rate while they are a customer,
  each with a dwell time that grows with z.

The first purchase falls within the user's first 30 days (the span of their ratings); purchases and
sessions end at the data set's last interaction. So a model that reads behaviour before a cut-off has
something real to find about the spend after it, and nothing in the data states it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cascade.data.dataset import Dataset
from cascade.data.transactions import Transactions

SECONDS_PER_WEEK = 7 * 86_400
_MAX_PURCHASES = 400  # per customer: the heaviest buyers' rate over a few years stays far below it


def generate_commerce(dataset: Dataset, seed: int = 0, name: str | None = None) -> Transactions:
    """Purchases (customer_id = user_id, item_id, timestamp, quantity, amount) and sessions (customer_id,
    timestamp, dwell_seconds) for every user of ``dataset`` with an interaction."""
    rng = np.random.default_rng([seed, 0xC0FFEE])
    interactions = dataset.interactions.sort_values("user_id", kind="stable", ignore_index=True)
    users = np.unique(interactions["user_id"].to_numpy())
    first_seen = interactions.groupby("user_id", sort=True)["timestamp"].min().to_numpy(dtype=np.float64)
    end = float(interactions["timestamp"].max())
    n = len(users)
    z = rng.standard_normal(n)

    # items: a price each, log-normal around 12 (a CD, a paperback, a film)
    item_ids = dataset.items["item_id"].to_numpy()
    price = np.round(np.exp(rng.normal(np.log(12.0), 0.5, size=len(item_ids))), 2)
    price_of = pd.Series(price, index=item_ids)

    # buy-till-you-die: rate per week and the chance of leaving after each purchase
    rate = rng.gamma(2.0, 0.5, size=n) * 0.12 * np.exp(0.7 * z)
    leave = 1.0 / (1.0 + np.exp(1.2 + 0.9 * z + 0.5 * rng.standard_normal(n)))
    times = [first_seen + rng.uniform(0, 30 * 86_400, size=n)]
    alive = times[0] < end
    current = times[0].copy()
    for _ in range(_MAX_PURCHASES - 1):
        alive &= rng.random(n) >= leave
        if not alive.any():
            break
        current = current + rng.exponential(1.0, size=n) / np.maximum(rate, 1e-9) * SECONDS_PER_WEEK
        alive &= current < end
        times.append(np.where(alive, current, np.nan))
    stamps = np.column_stack(times)  # (n, P), NaN where there was no purchase
    buyer_row, slot = np.nonzero(np.isfinite(stamps))
    purchase_time = stamps[buyer_row, slot].astype(np.int64)
    # the customer's last purchase: after it they are gone (or the data ends)
    last_purchase = np.nanmax(np.where(np.isfinite(stamps), stamps, -np.inf), axis=1)
    gone = np.where(np.isfinite(stamps[:, -1]), end, np.minimum(last_purchase + 4 * SECONDS_PER_WEEK, end))

    # what each order is: an item the user rated, in quantity growing with z
    rated = interactions[["user_id", "item_id"]].to_numpy()
    rated_start = np.searchsorted(interactions["user_id"].to_numpy(), users)
    rated_count = np.diff(np.append(rated_start, len(rated)))
    pick = rated_start[buyer_row] + (rng.random(len(buyer_row)) * rated_count[buyer_row]).astype(np.int64)
    order_item = rated[pick, 1]
    quantity = 1 + rng.poisson(0.6 * np.exp(0.5 * z[buyer_row]))
    amount = np.round(price_of.reindex(order_item).to_numpy() * quantity, 2)
    purchases = pd.DataFrame(
        {
            "customer_id": users[buyer_row],
            "item_id": order_item,
            "timestamp": purchase_time,
            "quantity": quantity.astype(np.int64),
            "amount": amount,
        }
    )

    # sessions while a customer: a few per purchase, with a dwell time growing with z
    visit_rate = rate * rng.uniform(2.0, 5.0, size=n)  # per week
    span_weeks = np.maximum(gone - first_seen, 0.0) / SECONDS_PER_WEEK
    visits = rng.poisson(visit_rate * span_weeks)
    visitor = np.repeat(np.arange(n), visits)
    visit_time = first_seen[visitor] + rng.random(len(visitor)) * (gone - first_seen)[visitor]
    dwell = np.exp(rng.normal(np.log(240.0) + 0.35 * z[visitor], 0.8))
    sessions = pd.DataFrame(
        {
            "customer_id": users[visitor],
            "timestamp": visit_time.astype(np.int64),
            "dwell_seconds": np.round(dwell, 1),
        }
    )
    return Transactions.create(
        name or f"{dataset.name}-commerce", purchases, sessions=sessions, interactions_dataset=dataset.name
    )
