"""The value model's inputs: fourteen indicators per customer, as of a cut-off, from events before it.

The method's fourteen indicators come in three groups: behaviour on the platform (profile, visits, time
online, interaction value), current value (time since the last purchase, purchases and spend in the last
year) and potential value (repeat and cross purchases, length of the relationship, brand perception,
willingness to recommend, the customer's own ratings, membership). What each source can honestly say of
them makes three sets of fourteen, chosen by what the log holds (``indicator_set``):

- ``PURCHASE_INDICATORS``, a purchase log alone (CDNOW): current value as the method has it, plus
  all-time frequency and money; potential value as repeat purchases, tenure, order values, units and the
  buying rhythm; recent purchases and spend (90 days) stand in for visits and time online, which a
  purchase log does not hold.
- ``PLATFORM_INDICATORS``, purchases with sessions, ratings and demographics (the synthetic generator's
  logs): visits and dwell time, ratings given (interaction value) and their mean (the customer's own
  ratings), age (profile), genres bought (cross purchases) beside the purchase indicators.
- ``ENGAGEMENT_INDICATORS``, ratings alone (MovieLens): a rating stands in for a purchase and its stars for
  money, so M is an engagement proxy; visits are active days, interaction value the ratings given, cross
  purchases the genres rated, the customer's own ratings their mean and their share of 4-5 stars.

Brand perception, willingness to recommend and membership have no counterpart in any of these logs; they
are not invented here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cascade.core.engines import LOCAL, OfflineEngine, PartitionedJob, PartResult, contiguous_parts
from cascade.customers.log import CustomerLog
from cascade.customers.rfm import SECONDS_PER_DAY

PURCHASE_INDICATORS = (
    "recency_days", "frequency", "monetary", "purchases_last_year", "spend_last_year",
    "purchases_last_90d", "spend_last_90d", "repeat_purchases", "tenure_days", "mean_order_value",
    "max_order_value", "units", "mean_units_per_order", "mean_days_between_purchases",
)  # fmt: skip
PLATFORM_INDICATORS = (
    "recency_days", "frequency", "monetary", "purchases_last_year", "spend_last_year", "repeat_purchases",
    "tenure_days", "mean_order_value", "genres_bought", "visits_last_90d", "dwell_minutes_last_90d",
    "ratings_given", "mean_rating_given", "age",
)  # fmt: skip
ENGAGEMENT_INDICATORS = (
    "recency_days", "frequency", "monetary", "ratings_last_year", "ratings_last_90d", "active_days",
    "active_days_last_90d", "ratings_per_active_day", "tenure_days", "mean_days_between_active_days",
    "genres_rated", "mean_rating_given", "high_rating_share", "age",
)  # fmt: skip


def indicator_set(log: CustomerLog) -> tuple[str, ...]:
    if log.purchases is None:
        return ENGAGEMENT_INDICATORS
    if log.sessions is not None and log.ratings is not None:
        return PLATFORM_INDICATORS
    return PURCHASE_INDICATORS


def customer_indicators(log: CustomerLog, as_of: float, engine: OfflineEngine = LOCAL) -> pd.DataFrame:
    """One row per customer with a purchase (a log without purchases: a rating) before ``as_of`` (index:
    customer_id, sorted), the columns of ``indicator_set(log)``. Nothing at or after ``as_of`` is read.

    ``engine`` computes parts of the customers where it runs jobs. Two indicators need the population as
    well as the customer (a missing age and a missing mean rating read as the population's typical
    value): the parts return them unfilled, with the population's side of them, and they are filled here."""
    columns = indicator_set(log)
    customers = _customers(log)
    parts = [
        pd.DataFrame({"customer_id": customers[rows]})
        for rows in contiguous_parts(len(customers), engine.partitions)
    ]
    results = engine.map_parts(_CustomerIndicators(log, as_of), parts)
    index = pd.Index(_concatenate(results, "customer_id", customers[:0]), name="customer_id")
    table = pd.DataFrame(
        {name: _concatenate(results, name, np.zeros(0)) for name in columns},
        index=index,
        columns=list(columns),
    )
    if "age" in columns:
        table["age"] = _typical_where_unknown(table["age"].to_numpy())
    if columns is PLATFORM_INDICATORS:
        # no rating yet: the population's mean, not 0, which would read as the harshest critic
        rated = pd.Series(
            _concatenate(results, "rating_means", np.zeros(0)),
            index=_concatenate(results, "rated_customers", customers[:0]),
        ).sort_index()
        fallback = float(rated.mean()) if len(rated) else 0.0
        table["mean_rating_given"] = table["mean_rating_given"].fillna(fallback)
    return table.astype(np.float64)


def _customers(log: CustomerLog) -> np.ndarray:
    """Every customer any table of the log names, sorted: what the parts split."""
    tables = [t for t in (log.purchases, log.sessions, log.ratings) if t is not None]
    return np.unique(np.concatenate([t["customer_id"].to_numpy() for t in tables]))


def _concatenate(results: list[dict[str, np.ndarray]], name: str, empty: np.ndarray) -> np.ndarray:
    return np.concatenate([r[name] for r in results]) if results else empty


def _portable(ids: np.ndarray) -> np.ndarray:
    """Customer ids as an array NumPy can save without pickling (text ids as fixed-width text)."""
    return ids.astype(str) if ids.dtype == object else ids


class _CustomerIndicators(PartitionedJob):
    """The indicators of one part of the customers, from their rows of the log: the customers, their
    indicator columns, the age unfilled (-1 unknown) and, with ratings and purchases both, the mean rating
    unfilled (NaN) beside every rated customer's mean rating in the part."""

    name = "customer indicators"

    def __init__(self, log: CustomerLog, as_of: float):
        self.log, self.as_of = log, as_of

    def run_part(self, part: dict[str, np.ndarray]) -> PartResult:
        log = self.log.of_customers(part["customer_id"])
        columns = indicator_set(log)
        out: PartResult = {}
        if columns is ENGAGEMENT_INDICATORS:
            table = _engagement(log, self.as_of)
        else:
            assert log.purchases is not None
            table = _purchases(log.purchases, self.as_of)
            if columns is PLATFORM_INDICATORS:
                rating_means = _platform(log, self.as_of, table)
                out["rated_customers"] = _portable(rating_means.index.to_numpy())
                out["rating_means"] = rating_means.to_numpy(dtype=np.float64)
        out["customer_id"] = _portable(table.index.to_numpy())
        out |= {name: table[name].to_numpy(dtype=np.float64) for name in columns}
        return out


def _platform(log: CustomerLog, as_of: float, table: pd.DataFrame) -> pd.Series:
    """Add PLATFORM_INDICATORS' columns beyond the purchase ones to ``table`` (mean rating given unfilled,
    NaN for a customer with none; age unfilled); returns every rated customer's mean rating."""
    assert log.purchases is not None and log.sessions is not None and log.ratings is not None
    customers = table.index
    table["genres_bought"] = _genres_covered(log.purchases, log.item_genres, as_of, customers)
    sessions = _before(log.sessions, as_of)
    recent = sessions[(as_of - sessions["timestamp"].to_numpy()) / SECONDS_PER_DAY <= 90]
    visits = recent.groupby("customer_id")
    table["visits_last_90d"] = visits.size().reindex(customers, fill_value=0)
    table["dwell_minutes_last_90d"] = (visits["dwell_seconds"].sum() / 60).reindex(customers, fill_value=0)
    ratings = _before(log.ratings, as_of).groupby("customer_id")["rating"]
    table["ratings_given"] = ratings.size().reindex(customers, fill_value=0)
    mean_rating = ratings.mean()
    table["mean_rating_given"] = mean_rating.reindex(customers)
    table["age"] = _raw_ages(log, customers)
    return mean_rating


def _before(table: pd.DataFrame, as_of: float) -> pd.DataFrame:
    return table[table["timestamp"].to_numpy() < as_of]


def _purchases(transactions: pd.DataFrame, as_of: float) -> pd.DataFrame:
    """PURCHASE_INDICATORS of every customer with a purchase before ``as_of``. Lines of one customer at
    one time are one order."""
    past = _before(transactions, as_of)
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
    return out[list(PURCHASE_INDICATORS)].astype(np.float64)


def _genres_covered(
    table: pd.DataFrame, item_genres: pd.Series | None, as_of: float, customers: pd.Index
) -> pd.Series:
    """How many distinct genres the items of each customer's events before ``as_of`` span."""
    past = _before(table, as_of)
    if item_genres is None or "item_id" not in past:
        return pd.Series(0.0, index=customers)
    genres = item_genres.reindex(past["item_id"].to_numpy()).fillna("").str.split("|")
    pairs = pd.DataFrame({"customer_id": past["customer_id"].to_numpy(), "genre": genres.to_numpy()})
    pairs = pairs.explode("genre")
    pairs = pairs[pairs["genre"].astype(str) != ""]
    return pairs.groupby("customer_id")["genre"].nunique().reindex(customers, fill_value=0).astype(float)


def _raw_ages(log: CustomerLog, customers: pd.Index) -> np.ndarray:
    """Each customer's age as the profiles have it, -1 where unknown."""
    if log.profiles is None:
        return np.full(len(customers), -1.0)
    return log.profiles.set_index("customer_id")["age"].reindex(customers).fillna(-1).to_numpy(dtype=float)


def _typical_where_unknown(ages: np.ndarray) -> np.ndarray:
    """An unknown age (-1) as the known ones' median, so that it reads as typical."""
    known = ages[ages > 0]
    return np.where(ages > 0, ages, float(np.median(known)) if len(known) else -1.0)


def _engagement(log: CustomerLog, as_of: float) -> pd.DataFrame:
    """ENGAGEMENT_INDICATORS of every customer with a rating before ``as_of``."""
    assert log.ratings is not None
    past = _before(log.ratings, as_of)
    stamps = past["timestamp"].to_numpy()
    age_days = (as_of - stamps) / SECONDS_PER_DAY
    frame = pd.DataFrame(
        {
            "customer_id": past["customer_id"].to_numpy(),
            "timestamp": stamps,
            "day": stamps // SECONDS_PER_DAY,
            "stars": past["rating"].to_numpy(dtype=np.float64),
            "last_year": age_days <= 365,
            "last_90d": age_days <= 90,
            "high": past["rating"].to_numpy() >= 4,
        }
    )
    by = frame.groupby("customer_id", sort=True)
    customers = by.size().index
    first, last, count = by["timestamp"].min(), by["timestamp"].max(), by.size()
    active_days = by["day"].nunique()
    recent = frame[frame["last_90d"]].groupby("customer_id")["day"].nunique()
    out = pd.DataFrame(
        {
            "recency_days": (as_of - last) / SECONDS_PER_DAY,
            "frequency": count,
            "monetary": by["stars"].sum(),
            "ratings_last_year": by["last_year"].sum(),
            "ratings_last_90d": by["last_90d"].sum(),
            "active_days": active_days,
            "active_days_last_90d": recent.reindex(customers, fill_value=0),
            "ratings_per_active_day": count / active_days,
            "tenure_days": (as_of - first) / SECONDS_PER_DAY,
            # one active day: no rhythm yet, and the tenure stands in (long, as the silence is)
            "mean_days_between_active_days": np.where(
                active_days > 1,
                (last - first) / SECONDS_PER_DAY / np.maximum(active_days - 1, 1),
                (as_of - first) / SECONDS_PER_DAY,
            ),
            "genres_rated": _genres_covered(log.ratings, log.item_genres, as_of, customers),
            "mean_rating_given": by["stars"].mean(),
            "high_rating_share": by["high"].mean(),
        }
    )
    out["age"] = _raw_ages(log, customers)
    return out[list(ENGAGEMENT_INDICATORS)].astype(np.float64)


def future_value(log: CustomerLog, start: float, end: float, customers: np.ndarray) -> np.ndarray:
    """(C,) each of ``customers``' value in [start, end): money spent where the log has purchases, else the
    number of ratings given (0 for customers who did nothing): what a model of customers as of ``start``
    is asked to predict."""
    table = log.purchases if log.purchases is not None else log.ratings
    assert table is not None
    stamps = table["timestamp"].to_numpy()
    window = table[(stamps >= start) & (stamps < end)].groupby("customer_id")
    realised = window["amount"].sum() if log.purchases is not None else window.size()
    return realised.reindex(customers, fill_value=0.0).to_numpy(dtype=np.float64)
