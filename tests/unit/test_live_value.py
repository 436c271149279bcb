"""A customer's value between batch loads: the batch's own figures until they act, then their activity on
the batch's scale."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from cascade.customers.config import CustomersConfig
from cascade.customers.live import ValueScale, live_value
from cascade.customers.profiles import value_profiles

DAY = 86_400


def population(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": rng.integers(1, 201, 3000),
            "timestamp": rng.integers(0, 200 * DAY, 3000),
            "rating": rng.integers(1, 6, 3000).astype(float),
        }
    )


def test_without_activity_every_customer_keeps_the_batch_figures_and_the_scale_reproduces_them():
    values, scale = value_profiles(population(), CustomersConfig())
    assert ValueScale.from_json(scale.to_json()) == scale
    for row in values.to_dict("records"):
        profile = {k: str(v) for k, v in row.items()}
        served = live_value(profile, None, scale, time.time())
        assert served.tier == row["tier"] and not served.moved
        # the batch's own values scored again on its scale give the batch's scores: the scale is faithful
        on_scale = live_value(profile, {"events": "1", "last": "0"}, scale, 0.0)
        assert on_scale.frequency_score >= int(row["frequency_score"])
    assert live_value({"gender": "F"}, None, scale, 0.0) is None  # no value load scored this profile


def test_a_returning_customer_climbs_from_d_and_never_falls_for_acting():
    values, scale = value_profiles(population(1), CustomersConfig())
    profiles = {row["user_id"]: {k: str(v) for k, v in row.items()} for row in values.to_dict("records")}
    d_tier = [p for p in profiles.values() if p["tier"] == "D"]
    now = time.time()
    climbed = 0
    for profile in d_tier:
        served = live_value(profile, {"events": "8", "stars": "40", "last": repr(now)}, scale, now)
        assert (
            served.recency_score == 5
            and served.tier <= "D"
            and served.current_value >= float(profile["current_value"])
        )
        climbed += served.tier < "D"
    assert climbed == len(d_tier)  # eight recent five-star events lift every D customer of this population
    anyone = next(iter(profiles.values()))
    assert live_value(anyone, {"events": "1", "last": repr(now)}, scale, now).tier <= anyone["tier"]
