"""Online feature store: user features and recent behaviour, behind a small ABC."""

from cascade.serving.feature_store.base import HistoryEvent, OnlineFeatureStore, RecordResult, UserState

__all__ = ["HistoryEvent", "OnlineFeatureStore", "RecordResult", "UserState"]
