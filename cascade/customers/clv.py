"""The CRM analyst's anchor: BG/NBD (Fader, Hardie and Lee 2005, "Counting your customers the easy way")
for how many purchases a customer will make, and the Gamma-Gamma model (Fader, Hardie and Lee 2005,
"RFM and CLV") for what each will be worth; their product is the customer's expected spend over a horizon.

Both are fitted by maximum likelihood on their closed-form likelihoods (scipy; no sampler): the CLV module
of pymc-marketing fits the same models by sampling, far heavier for the one number per customer needed
here. Time is in weeks; a customer's purchases on one day are one purchase occasion, as in the papers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import betaln, gammaln, hyp2f1

SECONDS_PER_WEEK = 7 * 86_400
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class CLVSummary:
    """Per customer (C,), from purchases before a cut-off: ``frequency`` repeat purchase occasions (days
    after the first with a purchase), ``recency`` weeks from the first purchase to the last, ``age`` weeks
    from the first purchase to the cut-off, ``repeat_value`` mean spend of the repeat occasions (0 when
    none)."""

    customers: np.ndarray
    frequency: np.ndarray
    recency: np.ndarray
    age: np.ndarray
    repeat_value: np.ndarray

    @classmethod
    def of(cls, transactions: pd.DataFrame, as_of: float) -> CLVSummary:
        past = transactions[transactions["timestamp"].to_numpy() < as_of]
        day = past["timestamp"].to_numpy() // SECONDS_PER_DAY
        days = (
            pd.DataFrame(
                {"customer_id": past["customer_id"].to_numpy(), "day": day, "amount": past["amount"]}
            )
            .groupby(["customer_id", "day"], sort=True)["amount"]
            .sum()
            .reset_index()
        )
        by = days.groupby("customer_id", sort=True)
        first, last, count = by["day"].min(), by["day"].max(), by.size()
        total = by["amount"].sum()
        first_spend = by["amount"].first()
        repeats = (count - 1).to_numpy()
        cut_day = as_of / SECONDS_PER_DAY
        return cls(
            customers=first.index.to_numpy(),
            frequency=repeats.astype(np.float64),
            recency=((last - first).to_numpy() / 7.0).astype(np.float64),
            age=((cut_day - first.to_numpy()) / 7.0).astype(np.float64),
            repeat_value=np.where(
                repeats > 0, (total - first_spend).to_numpy() / np.maximum(repeats, 1), 0.0
            ),
        )


@dataclass(frozen=True)
class BGNBD:
    r: float
    alpha: float
    a: float
    b: float

    @classmethod
    def fit(cls, summary: CLVSummary) -> BGNBD:
        x, t_x, big_t = summary.frequency, summary.recency, summary.age

        def negative_log_likelihood(log_params: np.ndarray) -> float:
            r, alpha, a, b = np.exp(log_params)
            a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
            a2 = betaln(a, b + x) - betaln(a, b)
            a3 = -(r + x) * np.log(alpha + big_t)
            with np.errstate(divide="ignore", invalid="ignore"):
                a4 = np.where(
                    x > 0,
                    np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x),
                    -np.inf,
                )
            return -float(np.sum(a1 + a2 + np.logaddexp(a3, a4)))

        fitted = minimize(negative_log_likelihood, np.zeros(4), method="Nelder-Mead",
                          options={"maxiter": 4000, "xatol": 1e-7, "fatol": 1e-7})  # fmt: skip
        return cls(*np.exp(fitted.x).tolist())

    def expected_purchases(self, summary: CLVSummary, weeks: float) -> np.ndarray:
        """(C,) purchase occasions each customer is expected to make in the next ``weeks``."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        x, t_x, big_t = summary.frequency, summary.recency, summary.age
        ratio = (alpha + big_t) / (alpha + big_t + weeks)
        head = (a + b + x - 1) / (a - 1)
        tail = 1 - ratio ** (r + x) * hyp2f1(r + x, b + x, a + b + x - 1, weeks / (alpha + big_t + weeks))
        alive = 1 + (x > 0) * (a / np.maximum(b + x - 1, 1e-12)) * ((alpha + big_t) / (alpha + t_x)) ** (
            r + x
        )
        return head * tail / alive


@dataclass(frozen=True)
class GammaGamma:
    p: float
    q: float
    gamma: float

    @classmethod
    def fit(cls, summary: CLVSummary) -> GammaGamma:
        # the model's spend per occasion is gamma distributed: repeat buyers whose repeat occasions cost
        # nothing (CDNOW has free orders) have no likelihood under it, and are left out of the fit
        repeat = (summary.frequency > 0) & (summary.repeat_value > 0)
        x, m = summary.frequency[repeat], summary.repeat_value[repeat]

        def negative_log_likelihood(log_params: np.ndarray) -> float:
            p, q, gamma = np.exp(log_params)
            shape = gammaln(p * x + q) - gammaln(p * x) - gammaln(q) + q * np.log(gamma)
            ll = shape + (p * x - 1) * np.log(m) + p * x * np.log(x) - (p * x + q) * np.log(x * m + gamma)
            return -float(np.sum(ll))

        fitted = minimize(negative_log_likelihood, np.zeros(3), method="Nelder-Mead",
                          options={"maxiter": 4000, "xatol": 1e-7, "fatol": 1e-7})  # fmt: skip
        return cls(*np.exp(fitted.x).tolist())

    def expected_value(self, summary: CLVSummary) -> np.ndarray:
        """(C,) each customer's expected spend per purchase occasion (the population mean without repeats)."""
        p, q, gamma = self.p, self.q, self.gamma
        x, m = summary.frequency, summary.repeat_value
        return (p * (gamma + x * m)) / (p * x + q - 1)


def expected_spend(transactions: pd.DataFrame, as_of: float, weeks: float) -> tuple[np.ndarray, np.ndarray]:
    """BG/NBD x Gamma-Gamma fitted on the purchases before ``as_of`` -> (customers (C,), their expected
    spend over the next ``weeks``). Fits on no purchase at or after the cut-off, and needs no labels."""
    summary = CLVSummary.of(transactions, as_of)
    purchases = BGNBD.fit(summary).expected_purchases(summary, weeks)
    return summary.customers, purchases * GammaGamma.fit(summary).expected_value(summary)
