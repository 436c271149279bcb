"""The abnormal-behaviour guard's config: the offline scan and the online checks of RecordEvent."""

from __future__ import annotations

from pydantic import Field

from cascade.core.config import ComponentConfig


class GuardConfig(ComponentConfig):
    scan_before_training: bool = Field(
        True,
        description="Scan the data set for coordinated fake profiles (cascade guard scan) before a training "
        "run whose data set has changed since the last scan; flagged profiles are left out of training and "
        "evaluation (and of feature loads) until cleared.",
    )
    screen_score: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="A profile's probability of being fake (cross-fitted detector) from which it is a "
        "suspect of the scan.",
    )
    min_group: int = Field(
        3,
        ge=1,
        description="Suspects that must rate one item at the top for them to be flagged as a group pushing "
        "it: one odd taste is not an attack.",
    )
    min_group_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of an item's top raters that must be suspects for that item to count as pushed.",
    )
    scan_folds: int = Field(
        5, ge=2, description="Folds of users the scan cross-fits over (each scored by a fit on the others)."
    )
    scan_passes: int = Field(
        2,
        ge=1,
        description="Scan passes; each after the first fits without the profiles the one before flagged.",
    )
    online: bool = Field(
        True, description="Check every RecordEvent: rate limits, blocks, the live score and quarantine."
    )
    rate_window_s: float = Field(
        60.0, gt=0, description="The sliding window the rate limits count events over, in seconds."
    )
    user_events_per_window: int = Field(
        120,
        ge=1,
        description="Events one user may record per window; beyond, RESOURCE_EXHAUSTED with a retry delay.",
    )
    client_events_per_window: int = Field(
        6000,
        ge=1,
        description="Events one client (API key, or peer address without keys) may record per window.",
    )
    item_events_per_window: int = Field(
        3000, ge=1, description="Events all users together may record on one item per window."
    )
    live_min_ratings: int = Field(
        20,
        ge=1,
        description="Ratings a user's profile needs before the live detector scores it (fewer say too "
        "little to tell).",
    )
    live_quarantine_score: float = Field(
        0.97,
        gt=0,
        le=1,
        description="The detector's probability (cascade train guard) from which a user's later events are "
        "quarantined: stored apart, kept out of their personalisation, until an operator clears them.",
    )
    quarantine_length: int = Field(
        1000, ge=1, description="Quarantined events kept per user (the oldest dropped beyond)."
    )
