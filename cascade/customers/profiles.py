"""Every user's value as served: RFM scores, the current value C, its band and the tier, from the data
set's interactions, written beside the demographics in the feature store (``cascade features load``).

The tiers served are the quartiles of the method's weighted RFM value C: on CDNOW it found next period's
value at least as well as the learned models (README, "Customer value"). A MovieLens log has no money: a
rating stands in for a purchase and its stars for the money spent (M is an engagement proxy there).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cascade.customers.config import CustomersConfig
from cascade.customers.live import ValueScale
from cascade.customers.rfm import RFMScores, rfm_indicators, value_bands
from cascade.customers.tiers import TIERS, quartile_tiers
from cascade.customers.weights import rfm_weights

# the profile fields a value load writes, beside USER_FEATURE_FIELDS: the scores, C, its band and the tier,
# then the values they were scored from (``live.live_value`` scores them again with later activity)
VALUE_FIELDS = (
    "tier", "recency_score", "frequency_score", "monetary_score", "current_value", "value_band",
    "recency_days", "frequency", "monetary",
)  # fmt: skip


def value_profiles(
    interactions: pd.DataFrame, config: CustomersConfig
) -> tuple[pd.DataFrame, ValueScale | None]:
    """One row per user with an interaction (in the last ``config.rfm_window_days``, when set: user_id,
    then VALUE_FIELDS as text), as of just after the data set's last interaction, and the scale they were
    scored on (None without interactions). ``interactions``: user_id, timestamp, and ``amount`` or
    ``rating``."""
    if not len(interactions):
        return pd.DataFrame(columns=["user_id", *VALUE_FIELDS]), None
    amount = interactions["amount"] if "amount" in interactions else interactions["rating"]
    log = pd.DataFrame(
        {
            "customer_id": interactions["user_id"].to_numpy(),
            "timestamp": interactions["timestamp"].to_numpy(),
            "amount": amount.to_numpy(dtype=float),
        }
    )
    rfm = rfm_indicators(log, float(log["timestamp"].max()) + 1, config.rfm_window_days)
    if not len(rfm):
        return pd.DataFrame(columns=["user_id", *VALUE_FIELDS]), None
    weights = rfm_weights(config, rfm)
    scores = RFMScores.of(rfm)
    value = scores.current_value(weights)
    tiers = quartile_tiers(value)
    scale = ValueScale.of(rfm.recency_days, rfm.frequency, rfm.monetary, scores, value, tiers, weights)
    table = pd.DataFrame(
        {
            "user_id": rfm.customers,
            "tier": [TIERS[t] for t in tiers.tolist()],
            "recency_score": scores.recency.astype(str),
            "frequency_score": scores.frequency.astype(str),
            "monetary_score": scores.monetary.astype(str),
            "current_value": [f"{c:.3f}" for c in value.tolist()],
            "value_band": value_bands(value).astype(str),
            "recency_days": [f"{r:.4f}" for r in rfm.recency_days.tolist()],
            "frequency": rfm.frequency.astype(np.int64).astype(str),
            "monetary": [f"{m:.2f}" for m in rfm.monetary.tolist()],
        }
    )
    return table, scale


def user_values(interactions: pd.DataFrame, config: CustomersConfig) -> dict:
    """user id -> their current value C / 5 in (0, 1], as of just after ``interactions`` end: what the
    rankers' user_value feature holds (0 for a user without a value)."""
    table, _ = value_profiles(interactions, config)
    return dict(zip(table["user_id"].tolist(), (table["current_value"].astype(float) / 5.0).tolist()))
