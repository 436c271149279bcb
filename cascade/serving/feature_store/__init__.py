"""Online feature store: user features and recent behaviour, behind a small ABC."""

from cascade.serving.feature_store.base import HistoryEvent, OnlineFeatureStore, UserState

__all__ = ["HistoryEvent", "OnlineFeatureStore", "UserState"]
