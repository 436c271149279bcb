"""The customer-value component's config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cascade.core.config import ComponentConfig


class RFMWeights(ComponentConfig):
    """The weights of C = R x W_R + F x W_F + M x W_M, normalised to sum to 1 when used. The default is the
    expert weighting of Liu and Shih (2005), derived by the analytic hierarchy process: money counts most,
    recency least."""

    recency: float = Field(0.221, ge=0, description="W_R: weight of the recency score.")
    frequency: float = Field(0.341, ge=0, description="W_F: weight of the frequency score.")
    monetary: float = Field(0.439, ge=0, description="W_M: weight of the monetary score.")

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.recency, self.frequency, self.monetary)


class AHPComparisons(ComponentConfig):
    """Saaty's pairwise comparisons of the indicators: how many times more one matters than the other (1:
    equally; 3: moderately more; 5: strongly; below 1: less). The default is consistent, and close to the
    expert weights."""

    recency_vs_frequency: float = Field(
        0.65, gt=0, description="How much more recency matters than frequency."
    )
    recency_vs_monetary: float = Field(0.5, gt=0, description="How much more recency matters than money.")
    frequency_vs_monetary: float = Field(
        0.78, gt=0, description="How much more frequency matters than money."
    )


class CustomersConfig(ComponentConfig):
    rfm_weighting: Literal["expert", "ahp", "entropy"] = Field(
        "expert",
        description="How the weights of C are set: expert (rfm_weights as given), ahp (from the pairwise "
        "comparisons in ahp), entropy (from the spread of each indicator over the customers scored).",
    )
    rfm_weights: RFMWeights = Field(
        default_factory=RFMWeights, description="The expert weights of the current value C."
    )
    ahp: AHPComparisons = Field(
        default_factory=AHPComparisons, description="The pairwise comparisons of rfm_weighting = ahp."
    )
    rfm_window_days: float | None = Field(
        None,
        gt=0,
        description="The served RFM (feature load) over events this many days before the data's end; unset: "
        "all of them. A customer with no event in the window gets no tier.",
    )
    value_period_days: float = Field(
        182.0,
        gt=0,
        description="The period whose spend the value models predict. Evaluation: trained on the indicators "
        "as of two periods before the data ends against the spend of the period after, tested on the "
        "indicators as of one period before the end against the last period's spend.",
    )
