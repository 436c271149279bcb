"""`cascade evaluate value`: the customer-value models side by side on a time split of a purchase log.

Two cut-offs a period apart before the data's end: the models learn from the indicators as of the first
against the spend of the period after it, and are tested on the indicators as of the second against the
spend of the last period. Customers are those with a purchase before the cut-off."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cascade.config import AppConfig
from cascade.core.seeding import seed_everything
from cascade.customers.clv import SECONDS_PER_WEEK, expected_spend
from cascade.customers.indicators import customer_indicators, future_value
from cascade.customers.rfm import SECONDS_PER_DAY
from cascade.customers.tiers import tiering_report
from cascade.customers.value_model import BPNetwork, KMeansSegments, LightGBMValue, WeightedRFM
from cascade.data.transactions import Transactions

logger = logging.getLogger(__name__)

CLV = "BG/NBD + Gamma-Gamma CLV"


def evaluate_value(config: AppConfig, dataset: str = "cdnow") -> dict[str, dict]:
    """Per model: Spearman with the test period's realised spend, each quartile tier's share of it (tier
    A's lift), and the confusion of predicted against realised tiers; plus the split's figures."""
    seed_everything(config.seed)
    transactions = Transactions.load(Path(config.data.data_dir) / dataset).table
    period = config.customers.value_period_days * SECONDS_PER_DAY
    end = float(transactions["timestamp"].max()) + SECONDS_PER_DAY
    test_cut, train_cut = end - period, end - 2 * period
    train_x = customer_indicators(transactions, train_cut)
    train_y = future_value(transactions, train_cut, test_cut, train_x.index.to_numpy())
    test_x = customer_indicators(transactions, test_cut)
    test_y = future_value(transactions, test_cut, end, test_x.index.to_numpy())
    report: dict[str, dict] = {
        "_split": {
            "train_cut_off": train_cut,
            "test_cut_off": test_cut,
            "end": end,
            "train_customers": len(train_x),
            "test_customers": len(test_x),
            "test_buyers_share": float((test_y > 0).mean()),
            "test_spend": float(test_y.sum()),
        }
    }
    models = (
        WeightedRFM(config.customers.rfm_weights.as_tuple()),
        BPNetwork(config.seed),
        LightGBMValue(config.seed),
        KMeansSegments(config.seed),
    )
    for model in models:
        scores = model.fit(train_x, train_y).predict(test_x)
        report[model.name] = tiering_report(scores, test_y)
        logger.info("%s: Spearman %.3f", model.name, report[model.name]["spearman"])
        if isinstance(model, KMeansSegments):  # the segments themselves, best first, beside the tiers
            labels = model.assign(test_x)
            order = np.argsort(-model.segment_value)
            total = max(float(test_y.sum()), 1e-12)
            report[model.name]["segments"] = [
                {
                    "customers_share": float((labels == s).mean()),
                    "value_share": float(test_y[labels == s].sum() / total),
                    "training_mean_value": float(model.segment_value[s]),
                }
                for s in order.tolist()
            ]
    # the CRM analyst's anchor: fitted on the purchases before the test cut-off, no labels needed
    customers, spend = expected_spend(transactions, test_cut, period / SECONDS_PER_WEEK)
    clv = pd.Series(spend, index=customers).reindex(test_x.index, fill_value=0.0).to_numpy()
    report[CLV] = tiering_report(clv, test_y)
    return report
