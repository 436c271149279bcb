"""The customer-value component's config."""

from __future__ import annotations

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


class CustomersConfig(ComponentConfig):
    rfm_weights: RFMWeights = Field(default_factory=RFMWeights, description="Weights of the current value C.")
    rfm_window_days: float | None = Field(
        None, gt=0, description="RFM over purchases this many days before the cut-off; unset: all before it."
    )
    value_period_days: float = Field(
        182.0,
        gt=0,
        description="The period whose spend the value models predict. Evaluation: trained on the indicators "
        "as of two periods before the data ends against the spend of the period after, tested on the "
        "indicators as of one period before the end against the last period's spend.",
    )
