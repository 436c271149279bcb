"""The weights of C = R x W_R + F x W_F + M x W_M, by the three methods the customer-value literature uses:

- ``expert``: as configured (the default: Liu and Shih's, which they derived by AHP from experts' answers);
- ``ahp``: the analytic hierarchy process on a configured pairwise comparison of R, F and M: the principal
  eigenvector of the reciprocal matrix, refused when the comparisons are inconsistent (consistency ratio
  of 0.1 or more, Saaty's bound);
- ``entropy``: the entropy weight method, from the data itself: an indicator whose values spread customers
  apart more (lower entropy) weighs more. Computed on the customers being scored, as of their cut-off.
"""

from __future__ import annotations

import numpy as np

from cascade.core.errors import ConfigError
from cascade.customers.config import AHPComparisons, CustomersConfig
from cascade.customers.rfm import RFM

# Saaty's random consistency index of a 3 x 3 matrix
_RANDOM_INDEX_3 = 0.58


def ahp_weights(comparisons: AHPComparisons) -> tuple[float, float, float]:
    """The principal eigenvector of the pairwise comparison matrix of (R, F, M), summing to 1."""
    rf, rm, fm = (
        comparisons.recency_vs_frequency,
        comparisons.recency_vs_monetary,
        comparisons.frequency_vs_monetary,
    )
    matrix = np.array([[1.0, rf, rm], [1 / rf, 1.0, fm], [1 / rm, 1 / fm, 1.0]])
    eigenvalues, eigenvectors = np.linalg.eig(matrix)
    principal = int(np.argmax(eigenvalues.real))
    weights = np.abs(eigenvectors[:, principal].real)
    consistency_ratio = (eigenvalues[principal].real - 3) / 2 / _RANDOM_INDEX_3
    if consistency_ratio >= 0.1:
        raise ConfigError(
            f"customers.ahp: the comparisons are inconsistent (consistency ratio {consistency_ratio:.3f}, "
            "must be below 0.1): if R beats F and F beats M, R must beat M by about their product"
        )
    weights = weights / weights.sum()
    return (float(weights[0]), float(weights[1]), float(weights[2]))


def entropy_weights(rfm: RFM) -> tuple[float, float, float]:
    """Each indicator min-max scaled to [0, 1] (recency reversed: recent is good), its entropy over the
    customers e_j, and weights proportional to 1 - e_j. Equal weights when no indicator varies."""
    columns = [
        -np.asarray(rfm.recency_days, float),
        np.asarray(rfm.frequency, float),
        np.asarray(rfm.monetary, float),
    ]
    n = len(rfm)
    divergence = []
    for values in columns:
        span = values.max() - values.min() if n else 0.0
        if n < 2 or span <= 0:
            divergence.append(0.0)
            continue
        scaled = (values - values.min()) / span + 1e-12  # every customer a share, however small
        share = scaled / scaled.sum()
        entropy = -float(np.sum(share * np.log(share))) / np.log(n)
        divergence.append(1.0 - entropy)
    total = sum(divergence)
    if total <= 0:
        return (1 / 3, 1 / 3, 1 / 3)
    return tuple(d / total for d in divergence)  # type: ignore[return-value]


def rfm_weights(config: CustomersConfig, rfm: RFM) -> tuple[float, float, float]:
    """The weights of C for these customers by ``config.rfm_weighting``."""
    if config.rfm_weighting == "ahp":
        return ahp_weights(config.ahp)
    if config.rfm_weighting == "entropy":
        return entropy_weights(rfm)
    return config.rfm_weights.as_tuple()
