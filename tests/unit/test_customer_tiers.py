"""Tiers from value scores, and the report of how much realised value each tier holds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cascade.customers.config import CustomersConfig
from cascade.customers.indicators import (
    ENGAGEMENT_INDICATORS,
    PLATFORM_INDICATORS,
    PURCHASE_INDICATORS,
    customer_indicators,
    future_value,
)
from cascade.customers.log import CustomerLog
from cascade.customers.tiers import k_tiers, quartile_tiers, tiering_report
from cascade.customers.value_model import BPNetwork, KMeansSegments, LightGBMValue, WeightedRFM

DAY = 86_400


def test_quartile_tiers_hold_a_quarter_each_and_the_method_thresholds_k():
    tiers = quartile_tiers(np.arange(100.0))
    assert np.bincount(tiers).tolist() == [25, 25, 25, 25] and tiers[99] == 0 and tiers[0] == 3
    assert k_tiers(np.array([1.0, 0.75, 0.74, 0.5, 0.3, 0.1])).tolist() == [0, 0, 1, 1, 2, 3]
    perfect = tiering_report(np.arange(8.0), np.arange(8.0))
    assert perfect["spearman"] == pytest.approx(1.0)
    assert perfect["value_share_by_tier"]["A"] == pytest.approx(13 / 28)  # 6 + 7 of 0 + ... + 7
    assert np.trace(np.array(perfect["confusion_predicted_by_realised"])) == 8


def synthetic_shop(customers: int = 600, seed: int = 0) -> pd.DataFrame:
    """Customers buying at their own latent rate for a year: the rate is what next year's spend follows."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.7, 3.0, customers)  # orders per half year
    rows = []
    for customer, r in enumerate(rate):
        for _ in range(rng.poisson(r * 2) + 1):
            rows.append((customer, int(rng.integers(0, 365 * DAY)), 1, float(rng.gamma(2.0, 15.0))))
    return pd.DataFrame(rows, columns=["customer_id", "timestamp", "quantity", "amount"])


def test_every_value_model_learns_who_buys_next_from_purchases_before_the_cut_off():
    table = CustomerLog("shop", purchases=synthetic_shop())
    train_cut, test_cut, end = 182 * DAY, 273 * DAY, 365 * DAY
    train_x = customer_indicators(table, train_cut)
    assert list(train_x.columns) == list(PURCHASE_INDICATORS)
    train_y = future_value(table, train_cut, test_cut, train_x.index.to_numpy())
    test_x = customer_indicators(table, test_cut)
    test_y = future_value(table, test_cut, end, test_x.index.to_numpy())
    models = (
        WeightedRFM(CustomersConfig()),
        BPNetwork(seed=0, epochs=200),
        LightGBMValue(seed=0),
        KMeansSegments(seed=0),
    )
    for model in models:
        scores = model.fit(train_x, train_y).predict(test_x)
        report = tiering_report(scores, test_y)
        assert report["spearman"] > 0.3, model.name
        assert report["tier_a_lift"] > 1.5, model.name
    k = BPNetwork(seed=0, epochs=50).fit(train_x, train_y).predict(test_x)
    assert ((k >= 0) & (k <= 1)).all()  # the method's K


def test_value_profiles_put_every_user_with_interactions_in_a_tier():
    from cascade.customers.profiles import VALUE_FIELDS, value_profiles

    rng = np.random.default_rng(1)
    interactions = pd.DataFrame(
        {
            "user_id": rng.integers(1, 41, 400),
            "timestamp": rng.integers(0, 100 * DAY, 400),
            "rating": rng.integers(1, 6, 400).astype(float),
        }
    )
    profiles, _ = value_profiles(interactions, CustomersConfig())
    assert list(profiles.columns) == ["user_id", *VALUE_FIELDS]
    assert sorted(profiles["user_id"]) == sorted(interactions["user_id"].unique())
    assert profiles["tier"].value_counts().to_dict() == {"A": 10, "B": 10, "C": 10, "D": 10}
    best = profiles.loc[profiles["current_value"].astype(float).idxmax()]
    assert best["tier"] == "A" and best["value_band"] in {"4", "5"}
    assert value_profiles(interactions.iloc[:0], CustomersConfig())[0].empty


@pytest.fixture(scope="module")
def synthetic_logs():
    """A small synthetic data set and its purchases and sessions, as both kinds of customer log."""
    from cascade.data.synthetic import generate
    from cascade.data.synthetic_commerce import generate_commerce

    dataset = generate(600, 800, 20_000, seed=3)
    commerce = generate_commerce(dataset, seed=3)
    return CustomerLog.of_dataset(dataset), CustomerLog.of_transactions(commerce, dataset), commerce


def test_the_commerce_generator_gives_every_user_purchases_priced_from_the_items_and_sessions(synthetic_logs):
    _, _, commerce = synthetic_logs
    table, sessions = commerce.table, commerce.sessions
    assert table["customer_id"].nunique() == 600  # every user buys once at least
    assert (table["amount"] > 0).all() and (table["quantity"] >= 1).all()
    assert sessions is not None and (sessions["dwell_seconds"] > 0).all()
    assert commerce.interactions_dataset == "synthetic"
    repeat = table.groupby("customer_id").size()
    assert repeat.max() > 5 * repeat.median()  # heavy-tailed, as real purchase logs are


@pytest.mark.parametrize(
    ("which", "columns"), [(0, ENGAGEMENT_INDICATORS), (1, PLATFORM_INDICATORS)], ids=["ratings", "platform"]
)
def test_each_log_has_its_fourteen_indicators_and_none_reads_past_the_cut_off(synthetic_logs, which, columns):
    log = synthetic_logs[which]
    events = log.events
    as_of = float(np.quantile(events["timestamp"], 0.6))
    indicators = customer_indicators(log, as_of)
    assert list(indicators.columns) == list(columns) and len(columns) == 14
    assert np.isfinite(indicators.to_numpy()).all()

    # a leak test: every event at or after the cut-off moved to it, with other values, changes nothing
    def shifted(table):
        if table is None:
            return None
        table = table.copy()
        later = table["timestamp"] >= as_of
        table.loc[later, "timestamp"] = int(np.ceil(as_of))
        for column in ("amount", "rating", "dwell_seconds"):
            if column in table:
                table.loc[later, column] = table.loc[later, column][::-1].to_numpy()
        return table

    leaked = CustomerLog(
        log.name, shifted(log.purchases), shifted(log.sessions), shifted(log.ratings), log.profiles,
        log.item_genres,
    )  # fmt: skip
    pd.testing.assert_frame_equal(customer_indicators(leaked, as_of), indicators)


def test_the_models_find_the_latent_value_of_the_synthetic_shop(synthetic_logs):
    _, log, _ = synthetic_logs
    end = float(log.events["timestamp"].max()) + 1
    train_cut, test_cut = end - 2 * 182 * DAY, end - 182 * DAY
    train_x = customer_indicators(log, train_cut)
    model = LightGBMValue(seed=0).fit(
        train_x, future_value(log, train_cut, test_cut, train_x.index.to_numpy())
    )
    test_x = customer_indicators(log, test_cut)
    report = tiering_report(model.predict(test_x), future_value(log, test_cut, end, test_x.index.to_numpy()))
    assert report["spearman"] > 0.4 and report["tier_a_lift"] > 2.0


def test_the_published_value_model_scores_as_the_fitted_one(synthetic_logs, tmp_path):
    from cascade.core.artifacts import ArtifactStore
    from cascade.customers.value_bundle import VALUE, ValueBundle

    log = synthetic_logs[0]
    as_of = float(log.events["timestamp"].max()) + 1
    cut = as_of - 60 * DAY
    x = customer_indicators(log, cut)
    y = future_value(log, cut, as_of, x.index.to_numpy())
    fitted = ValueBundle(
        BPNetwork(0, epochs=30).fit(x, y), KMeansSegments(0).fit(x, y), ENGAGEMENT_INDICATORS
    )
    store = ArtifactStore(tmp_path)
    ref = store.publish(VALUE, fitted.write, fingerprint="f", config={}, schema_version=2)
    loaded = ValueBundle.load(ref)
    np.testing.assert_allclose(loaded.network.predict(x), fitted.network.predict(x), rtol=1e-6)
    np.testing.assert_array_equal(loaded.segments.ranks(x), fitted.segments.ranks(x))
    scored = loaded.profiles(log, as_of)
    assert list(scored.columns)[:4] == ["user_id", "value_k", "k_tier", "cluster"] and len(scored) == 600
    assert [c.removeprefix("indicator.") for c in scored.columns[4:]] == list(ENGAGEMENT_INDICATORS)
    assert set(scored["cluster"]) <= {"1", "2", "3", "4"}
    with pytest.raises(ValueError, match="train it again"):
        loaded.profiles(synthetic_logs[1], as_of)  # a log of another kind than it was fitted on


def test_the_weights_of_c_by_expert_ahp_and_entropy():
    from cascade.core.errors import ConfigError
    from cascade.customers.config import AHPComparisons
    from cascade.customers.rfm import RFM
    from cascade.customers.weights import ahp_weights, entropy_weights, rfm_weights

    # the default comparisons are consistent and give the experts' weights back
    np.testing.assert_allclose(ahp_weights(AHPComparisons()), (0.221, 0.341, 0.439), atol=0.002)
    with pytest.raises(ConfigError, match="inconsistent"):  # R > F 5x, F > M 5x, yet M > R 5x
        ahp_weights(AHPComparisons(recency_vs_frequency=5, frequency_vs_monetary=5, recency_vs_monetary=0.2))
    rng = np.random.default_rng(0)
    n = 500
    flat = RFM(
        np.arange(n), np.full(n, 3.0), rng.integers(1, 3, n).astype(float), rng.pareto(1.2, n) * 50, 0.0
    )
    weights = entropy_weights(flat)
    assert weights[0] == 0.0 and weights[2] > weights[1] and sum(weights) == pytest.approx(1.0)
    assert rfm_weights(CustomersConfig(rfm_weighting="entropy"), flat) == weights
    assert rfm_weights(CustomersConfig(), flat) == CustomersConfig().rfm_weights.as_tuple()
    scores = WeightedRFM(CustomersConfig(rfm_weighting="entropy")).predict(
        customer_indicators(CustomerLog("shop", purchases=synthetic_shop()), 365 * DAY)
    )
    assert np.isfinite(scores).all() and ((scores >= 1) & (scores <= 5)).all()
