"""Tiers A-D from value scores, and how well a tiering finds the value that was realised afterwards."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

TIERS = ("A", "B", "C", "D")


def quartile_tiers(scores: np.ndarray) -> np.ndarray:
    """(C,) scores -> tier index 0 (A: the best 25%) .. 3 (D); ties by customer order, so each tier holds a
    quarter of the customers."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    tiers = np.empty(len(order), dtype=np.int64)
    tiers[order] = np.minimum(np.arange(len(order)) * 4 // max(len(order), 1), 3)
    return tiers


def k_tiers(k: np.ndarray) -> np.ndarray:
    """The method's tiers of K in [0, 1]: A K >= 0.75, B 0.5-0.75, C 0.25-0.5, D below 0.25."""
    return np.select([k >= 0.75, k >= 0.5, k >= 0.25], [0, 1, 2], 3).astype(np.int64)


def tiering_report(scores: np.ndarray, realised: np.ndarray) -> dict:
    """Spearman correlation of scores with realised value, each quartile tier's share of customers and of
    the realised value (tier A's share over its 25% of customers is its lift), and the confusion of
    predicted tiers against the tiers of realised value."""
    predicted = quartile_tiers(scores)
    actual = quartile_tiers(realised)
    total = float(realised.sum())
    share = [float(realised[predicted == t].sum() / total) if total > 0 else 0.0 for t in range(4)]
    confusion = np.zeros((4, 4), dtype=np.int64)
    np.add.at(confusion, (predicted, actual), 1)
    rho = spearmanr(scores, realised).statistic if len(scores) > 1 else float("nan")
    return {
        "spearman": float(rho),
        "value_share_by_tier": dict(zip(TIERS, share)),
        "tier_a_lift": share[0] / 0.25,
        "confusion_predicted_by_realised": confusion.tolist(),
    }


def threshold_tiers_report(k: np.ndarray, realised: np.ndarray) -> dict[str, dict[str, float]]:
    """Per tier of the method's K thresholds (``k_tiers``): its share of the customers and of the realised
    value. Unlike quartiles, the sizes are whatever K makes them."""
    tiers = k_tiers(np.asarray(k))
    total = float(realised.sum())
    return {
        TIERS[t]: {
            "customers_share": float((tiers == t).mean()) if len(tiers) else 0.0,
            "value_share": float(realised[tiers == t].sum() / total) if total > 0 else 0.0,
        }
        for t in range(4)
    }
