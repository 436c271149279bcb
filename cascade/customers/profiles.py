"""Every user's value as served: RFM scores, the current value C, its band and the tier, from the data
set's interactions, written beside the demographics in the feature store (``cascade features load``).

The tiers served are the quartiles of the method's weighted RFM value C: on CDNOW it found next period's
value at least as well as the learned models (README, "Customer value"). A MovieLens log has no money: a
rating stands in for a purchase and its stars for the money spent (M is an engagement proxy there).
"""

from __future__ import annotations

import pandas as pd

from cascade.customers.rfm import RFMScores, rfm_indicators, value_bands
from cascade.customers.tiers import TIERS, quartile_tiers

# the profile fields a value load writes, beside USER_FEATURE_FIELDS
VALUE_FIELDS = ("tier", "recency_score", "frequency_score", "monetary_score", "current_value", "value_band")


def value_profiles(interactions: pd.DataFrame, weights: tuple[float, float, float]) -> pd.DataFrame:
    """One row per user with an interaction (user_id, then VALUE_FIELDS as text), as of just after the
    data set's last interaction. ``interactions``: user_id, timestamp, and ``amount`` or ``rating``."""
    if not len(interactions):
        return pd.DataFrame(columns=["user_id", *VALUE_FIELDS])
    amount = interactions["amount"] if "amount" in interactions else interactions["rating"]
    log = pd.DataFrame(
        {
            "customer_id": interactions["user_id"].to_numpy(),
            "timestamp": interactions["timestamp"].to_numpy(),
            "amount": amount.to_numpy(dtype=float),
        }
    )
    rfm = rfm_indicators(log, float(log["timestamp"].max()) + 1)
    scores = RFMScores.of(rfm)
    value = scores.current_value(weights)
    tiers = quartile_tiers(value)
    return pd.DataFrame(
        {
            "user_id": rfm.customers,
            "tier": [TIERS[t] for t in tiers.tolist()],
            "recency_score": scores.recency.astype(str),
            "frequency_score": scores.frequency.astype(str),
            "monetary_score": scores.monetary.astype(str),
            "current_value": [f"{c:.3f}" for c in value.tolist()],
            "value_band": value_bands(value).astype(str),
        }
    )
