"""`cascade evaluate value`: the customer-value models side by side on a time split of a customer log.

Two cut-offs a period apart before the data's end: the models learn from the indicators as of the first
against the value of the period after it, and are tested on the indicators as of the second against the
value of the last period. Customers are those with a purchase (a log without money: a rating) before the
cut-off; value is spend, or activity where there is no money (``CustomerLog.value_kind``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cascade.config import AppConfig
from cascade.core.artifacts import ArtifactRef, fingerprint
from cascade.core.engines import open_engine
from cascade.core.errors import DataError
from cascade.core.schema import SCHEMA_VERSION
from cascade.core.seeding import seed_everything
from cascade.customers.clv import SECONDS_PER_WEEK, expected_spend
from cascade.customers.indicators import customer_indicators, future_value, indicator_set
from cascade.customers.log import CustomerLog
from cascade.customers.rfm import SECONDS_PER_DAY
from cascade.customers.tiers import threshold_tiers_report, tiering_report
from cascade.customers.value_bundle import VALUE, ValueBundle
from cascade.customers.value_model import BPNetwork, KMeansSegments, LightGBMValue, ValueModel, WeightedRFM
from cascade.data.dataset import Dataset
from cascade.training.guard import scan_if_stale
from cascade.training.prepare import reuse_current

logger = logging.getLogger(__name__)

CLV = "BG/NBD + Gamma-Gamma CLV"
ENTROPY_RFM = "weighted RFM, entropy weights"


@dataclass(frozen=True)
class ValueSplit:
    """The time split and every model's scores of the test customers: indicators (C, 14) as of each
    cut-off, the spend of the period after it (C,), and per model the scores of the test customers."""

    train_x: pd.DataFrame
    train_y: np.ndarray
    test_x: pd.DataFrame
    test_y: np.ndarray
    cut_offs: tuple[float, float, float]  # train cut-off, test cut-off, end
    value_kind: str  # "spend" or "activity"
    indicators: tuple[str, ...]
    scores: dict[str, np.ndarray]
    segments: dict[str, list[dict]]  # k-means: its segments on the test customers, best first


def value_split(config: AppConfig, dataset: str = "cdnow", period_days: float | None = None) -> ValueSplit:
    """Fit every value model on the first cut-off and score the test customers as of the second.
    ``period_days``: the value period (default: the config's ``customers.value_period_days``)."""
    seed_everything(config.seed)
    log = CustomerLog.load(config.data.data_dir, dataset, config.pseudonyms())
    events = log.events
    period = (period_days or config.customers.value_period_days) * SECONDS_PER_DAY
    stamps = events["timestamp"].to_numpy()
    start, end = float(stamps.min()), float(stamps.max()) + SECONDS_PER_DAY
    test_cut, train_cut = end - period, end - 2 * period
    if train_cut <= start:
        raise DataError(
            f"{dataset} spans {(end - start) / SECONDS_PER_DAY:.0f} days: too short for two value periods of "
            f"{period / SECONDS_PER_DAY:.0f} days after some history (--period-days)"
        )
    with open_engine(config.offline) as engine:
        train_x = customer_indicators(log, train_cut, engine)
        test_x = customer_indicators(log, test_cut, engine)
    train_y = future_value(log, train_cut, test_cut, train_x.index.to_numpy())
    test_y = future_value(log, test_cut, end, test_x.index.to_numpy())
    models: list[tuple[str, ValueModel]] = [
        (WeightedRFM.name, WeightedRFM(config.customers)),
        (BPNetwork.name, BPNetwork(config.seed)),
        (LightGBMValue.name, LightGBMValue(config.seed)),
        (KMeansSegments.name, KMeansSegments(config.seed)),
    ]
    if config.customers.rfm_weighting != "entropy":  # the data's own weights beside the configured ones
        entropy = config.customers.model_copy(update={"rfm_weighting": "entropy"})
        models.insert(1, (ENTROPY_RFM, WeightedRFM(entropy)))
    scores: dict[str, np.ndarray] = {}
    segments: dict[str, list[dict]] = {}
    for name, model in models:
        scores[name] = model.fit(train_x, train_y).predict(test_x)
        if isinstance(model, KMeansSegments):  # the segments themselves, best first, beside the tiers
            labels = model.assign(test_x)
            total = max(float(test_y.sum()), 1e-12)
            segments[name] = [
                {
                    "customers_share": float((labels == s).mean()),
                    "value_share": float(test_y[labels == s].sum() / total),
                    "training_mean_value": float(model.segment_value[s]),
                }
                for s in np.argsort(-model.segment_value).tolist()
            ]
    if log.purchases is not None:
        # the CRM analyst's anchor, where there is money: fitted on the purchases before the test cut-off
        customers, spend = expected_spend(log.purchases, test_cut, period / SECONDS_PER_WEEK)
        scores[CLV] = pd.Series(spend, index=customers).reindex(test_x.index, fill_value=0.0).to_numpy()
    return ValueSplit(
        train_x, train_y, test_x, test_y, (train_cut, test_cut, end), log.value_kind, indicator_set(log),
        scores, segments,
    )  # fmt: skip


def evaluate_value(
    config: AppConfig, dataset: str = "cdnow", period_days: float | None = None
) -> dict[str, dict]:
    """Per model: Spearman with the test period's realised value, each quartile tier's share of it (tier
    A's lift), and the confusion of predicted against realised tiers; plus the split's figures."""
    split = value_split(config, dataset, period_days)
    train_cut, test_cut, end = split.cut_offs
    report: dict[str, dict] = {
        "_split": {
            "train_cut_off": train_cut,
            "test_cut_off": test_cut,
            "end": end,
            "train_customers": len(split.train_x),
            "test_customers": len(split.test_x),
            "value": split.value_kind,
            "indicators": list(split.indicators),
            "period_days": (test_cut - train_cut) / SECONDS_PER_DAY,
            "test_active_share": float((split.test_y > 0).mean()),
            "test_value": float(split.test_y.sum()),
        }
    }
    for name, scores in split.scores.items():
        report[name] = tiering_report(scores, split.test_y)
        if name == BPNetwork.name:  # its output is the method's K: its absolute tiers beside the quartiles
            report[name]["k_threshold_tiers"] = threshold_tiers_report(scores, split.test_y)
        if name in split.segments:
            report[name]["segments"] = split.segments[name]
        logger.info("%s: Spearman %.3f", name, report[name]["spearman"])
    return report


def train_value(config: AppConfig, force: bool = False) -> ArtifactRef:
    """Fit the BP network and the k-means segments on the served data set's customers, as of one value
    period before its end against the value of that last period, and publish them (kind ``value``) with
    the held-out evaluation of every model (``evaluate_value``) as their metrics."""
    scan_if_stale(config)  # the guard's exclusions first: they change the data set's fingerprint
    store = config.artifact_store()
    dataset = config.data.dataset
    data_fp = Dataset.fingerprint_of(config.data.path)
    wanted = fingerprint("value", data_fp, config.seed, config.customers.model_dump(mode="json"))
    if (ref := reuse_current(store, VALUE, wanted, force)) is not None:
        return ref
    report = evaluate_value(config, dataset)
    seed_everything(config.seed)
    log = CustomerLog.load(config.data.data_dir, dataset, config.pseudonyms())
    period = config.customers.value_period_days * SECONDS_PER_DAY
    end = float(log.events["timestamp"].max()) + SECONDS_PER_DAY
    with open_engine(config.offline) as engine:
        indicators = customer_indicators(log, end - period, engine)
    realised = future_value(log, end - period, end, indicators.index.to_numpy())
    bundle = ValueBundle(
        network=BPNetwork(config.seed).fit(indicators, realised),
        segments=KMeansSegments(config.seed).fit(indicators, realised),
        indicators=indicator_set(log),
    )
    metrics = {
        f"{name} {metric}": value
        for name, result in report.items()
        if not name.startswith("_")
        for metric, value in (
            ("spearman", result["spearman"]),
            ("tier A share", result["value_share_by_tier"]["A"]),
        )
    }
    return store.publish(
        VALUE,
        lambda folder: bundle.write(folder),
        fingerprint=wanted,
        config=config.model_dump(mode="json"),
        schema_version=SCHEMA_VERSION,
        metrics=metrics,
        extra={
            "dataset": {"name": dataset, "fingerprint": data_fp},
            "value": log.value_kind,
            "indicators": list(bundle.indicators),
            "evaluation": report["_split"],
        },
    )
