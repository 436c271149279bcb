from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_VIEW: _ClassVar[EventType]
    EVENT_TYPE_CLICK: _ClassVar[EventType]
    EVENT_TYPE_RATE: _ClassVar[EventType]
    EVENT_TYPE_PURCHASE: _ClassVar[EventType]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_VIEW: EventType
EVENT_TYPE_CLICK: EventType
EVENT_TYPE_RATE: EventType
EVENT_TYPE_PURCHASE: EventType

class ListFlagsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class GuardFlag(_message.Message):
    __slots__ = ("pseudonym", "state", "reason", "score", "since", "by", "quarantined_events")
    PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    pseudonym: str
    state: str
    reason: str
    score: float
    since: int
    by: str
    quarantined_events: int
    def __init__(self, pseudonym: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., score: _Optional[float] = ..., since: _Optional[int] = ..., by: _Optional[str] = ..., quarantined_events: _Optional[int] = ...) -> None: ...

class ListFlagsResponse(_message.Message):
    __slots__ = ("flags",)
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    flags: _containers.RepeatedCompositeFieldContainer[GuardFlag]
    def __init__(self, flags: _Optional[_Iterable[_Union[GuardFlag, _Mapping]]] = ...) -> None: ...

class GuardUserRequest(_message.Message):
    __slots__ = ("user_id", "pseudonym", "reason", "discard_quarantined")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DISCARD_QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    pseudonym: str
    reason: str
    discard_quarantined: bool
    def __init__(self, user_id: _Optional[str] = ..., pseudonym: _Optional[str] = ..., reason: _Optional[str] = ..., discard_quarantined: _Optional[bool] = ...) -> None: ...

class GuardUserResponse(_message.Message):
    __slots__ = ("previous_state", "events")
    PREVIOUS_STATE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    previous_state: str
    events: int
    def __init__(self, previous_state: _Optional[str] = ..., events: _Optional[int] = ...) -> None: ...

class ForgetUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ForgetUserResponse(_message.Message):
    __slots__ = ("pseudonym", "removed", "deny_listed", "already_deny_listed")
    class RemovedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    DENY_LISTED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_DENY_LISTED_FIELD_NUMBER: _ClassVar[int]
    pseudonym: str
    removed: _containers.ScalarMap[str, int]
    deny_listed: bool
    already_deny_listed: bool
    def __init__(self, pseudonym: _Optional[str] = ..., removed: _Optional[_Mapping[str, int]] = ..., deny_listed: _Optional[bool] = ..., already_deny_listed: _Optional[bool] = ...) -> None: ...

class UpsertItemRequest(_message.Message):
    __slots__ = ("item_id", "title", "genres", "year", "attributes", "request_id")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    YEAR_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    title: str
    genres: _containers.RepeatedScalarFieldContainer[str]
    year: int
    attributes: _containers.ScalarMap[str, str]
    request_id: str
    def __init__(self, item_id: _Optional[str] = ..., title: _Optional[str] = ..., genres: _Optional[_Iterable[str]] = ..., year: _Optional[int] = ..., attributes: _Optional[_Mapping[str, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpsertItemResponse(_message.Message):
    __slots__ = ("request_id", "created", "catalogue_version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CATALOGUE_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    created: bool
    catalogue_version: int
    def __init__(self, request_id: _Optional[str] = ..., created: _Optional[bool] = ..., catalogue_version: _Optional[int] = ...) -> None: ...

class DeleteItemRequest(_message.Message):
    __slots__ = ("item_id", "request_id")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    request_id: str
    def __init__(self, item_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteItemResponse(_message.Message):
    __slots__ = ("request_id", "deleted", "catalogue_version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    CATALOGUE_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    deleted: bool
    catalogue_version: int
    def __init__(self, request_id: _Optional[str] = ..., deleted: _Optional[bool] = ..., catalogue_version: _Optional[int] = ...) -> None: ...

class Demographics(_message.Message):
    __slots__ = ("gender", "age", "occupation", "zip_code")
    GENDER_FIELD_NUMBER: _ClassVar[int]
    AGE_FIELD_NUMBER: _ClassVar[int]
    OCCUPATION_FIELD_NUMBER: _ClassVar[int]
    ZIP_CODE_FIELD_NUMBER: _ClassVar[int]
    gender: str
    age: int
    occupation: str
    zip_code: str
    def __init__(self, gender: _Optional[str] = ..., age: _Optional[int] = ..., occupation: _Optional[str] = ..., zip_code: _Optional[str] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "exclude_item_ids", "request_id", "demographics", "budget_ms", "explain", "surface", "timestamp", "include_genres", "exclude_genres", "page_size", "page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEMOGRAPHICS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_GENRES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_GENRES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    demographics: Demographics
    budget_ms: int
    explain: bool
    surface: str
    timestamp: int
    include_genres: _containers.RepeatedScalarFieldContainer[str]
    exclude_genres: _containers.RepeatedScalarFieldContainer[str]
    page_size: int
    page_token: str
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ..., demographics: _Optional[_Union[Demographics, _Mapping]] = ..., budget_ms: _Optional[int] = ..., explain: _Optional[bool] = ..., surface: _Optional[str] = ..., timestamp: _Optional[int] = ..., include_genres: _Optional[_Iterable[str]] = ..., exclude_genres: _Optional[_Iterable[str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ItemExplanation(_message.Message):
    __slots__ = ("ranker_score", "rules")
    RANKER_SCORE_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    ranker_score: float
    rules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ranker_score: _Optional[float] = ..., rules: _Optional[_Iterable[str]] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "title", "score", "source", "channel_score", "explanation", "propensity", "position")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_SCORE_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    title: str
    score: float
    source: str
    channel_score: float
    explanation: ItemExplanation
    propensity: float
    position: int
    def __init__(self, item_id: _Optional[str] = ..., title: _Optional[str] = ..., score: _Optional[float] = ..., source: _Optional[str] = ..., channel_score: _Optional[float] = ..., explanation: _Optional[_Union[ItemExplanation, _Mapping]] = ..., propensity: _Optional[float] = ..., position: _Optional[int] = ...) -> None: ...

class ModelVersions(_message.Message):
    __slots__ = ("recall", "index", "ranking", "rules")
    RECALL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    recall: str
    index: str
    ranking: str
    rules: str
    def __init__(self, recall: _Optional[str] = ..., index: _Optional[str] = ..., ranking: _Optional[str] = ..., rules: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("request_id", "items", "model_versions", "new_user", "stage_ms", "degraded", "degraded_reasons", "removed_by_rule", "next_page_token", "tier")
    class StageMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class RemovedByRuleEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEW_USER_FIELD_NUMBER: _ClassVar[int]
    STAGE_MS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_BY_RULE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    model_versions: ModelVersions
    new_user: bool
    stage_ms: _containers.ScalarMap[str, float]
    degraded: bool
    degraded_reasons: _containers.RepeatedScalarFieldContainer[str]
    removed_by_rule: _containers.ScalarMap[str, int]
    next_page_token: str
    tier: str
    def __init__(self, request_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., model_versions: _Optional[_Union[ModelVersions, _Mapping]] = ..., new_user: _Optional[bool] = ..., stage_ms: _Optional[_Mapping[str, float]] = ..., degraded: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[str]] = ..., removed_by_rule: _Optional[_Mapping[str, int]] = ..., next_page_token: _Optional[str] = ..., tier: _Optional[str] = ...) -> None: ...

class RecordEventRequest(_message.Message):
    __slots__ = ("user_id", "item_id", "event_type", "timestamp", "event_id", "rating")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    event_type: EventType
    timestamp: int
    event_id: str
    rating: float
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., event_type: _Optional[_Union[EventType, str]] = ..., timestamp: _Optional[int] = ..., event_id: _Optional[str] = ..., rating: _Optional[float] = ...) -> None: ...

class RecordEventResponse(_message.Message):
    __slots__ = ("history_length", "duplicate", "quarantined")
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    history_length: int
    duplicate: bool
    quarantined: bool
    def __init__(self, history_length: _Optional[int] = ..., duplicate: _Optional[bool] = ..., quarantined: _Optional[bool] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "k", "request_id", "exclude_item_ids", "include_genres", "exclude_genres", "surface", "explain")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_GENRES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_GENRES_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    k: int
    request_id: str
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    include_genres: _containers.RepeatedScalarFieldContainer[str]
    exclude_genres: _containers.RepeatedScalarFieldContainer[str]
    surface: str
    explain: bool
    def __init__(self, item_id: _Optional[str] = ..., k: _Optional[int] = ..., request_id: _Optional[str] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., include_genres: _Optional[_Iterable[str]] = ..., exclude_genres: _Optional[_Iterable[str]] = ..., surface: _Optional[str] = ..., explain: _Optional[bool] = ...) -> None: ...

class SimilarItem(_message.Message):
    __slots__ = ("item_id", "title", "score", "explanation")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    title: str
    score: float
    explanation: ItemExplanation
    def __init__(self, item_id: _Optional[str] = ..., title: _Optional[str] = ..., score: _Optional[float] = ..., explanation: _Optional[_Union[ItemExplanation, _Mapping]] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("request_id", "items", "model_versions", "removed_by_rule")
    class RemovedByRuleEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_BY_RULE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    items: _containers.RepeatedCompositeFieldContainer[SimilarItem]
    model_versions: ModelVersions
    removed_by_rule: _containers.ScalarMap[str, int]
    def __init__(self, request_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[SimilarItem, _Mapping]]] = ..., model_versions: _Optional[_Union[ModelVersions, _Mapping]] = ..., removed_by_rule: _Optional[_Mapping[str, int]] = ...) -> None: ...

class CustomerProfileRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class CustomerValue(_message.Message):
    __slots__ = ("recency_score", "frequency_score", "monetary_score", "current_value", "value_band", "tier", "moved_since_load", "events_since_load", "value_k", "k_tier", "cluster", "indicators")
    class IndicatorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RECENCY_SCORE_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_SCORE_FIELD_NUMBER: _ClassVar[int]
    MONETARY_SCORE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VALUE_FIELD_NUMBER: _ClassVar[int]
    VALUE_BAND_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    MOVED_SINCE_LOAD_FIELD_NUMBER: _ClassVar[int]
    EVENTS_SINCE_LOAD_FIELD_NUMBER: _ClassVar[int]
    VALUE_K_FIELD_NUMBER: _ClassVar[int]
    K_TIER_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    INDICATORS_FIELD_NUMBER: _ClassVar[int]
    recency_score: int
    frequency_score: int
    monetary_score: int
    current_value: float
    value_band: int
    tier: str
    moved_since_load: bool
    events_since_load: int
    value_k: float
    k_tier: str
    cluster: int
    indicators: _containers.ScalarMap[str, float]
    def __init__(self, recency_score: _Optional[int] = ..., frequency_score: _Optional[int] = ..., monetary_score: _Optional[int] = ..., current_value: _Optional[float] = ..., value_band: _Optional[int] = ..., tier: _Optional[str] = ..., moved_since_load: _Optional[bool] = ..., events_since_load: _Optional[int] = ..., value_k: _Optional[float] = ..., k_tier: _Optional[str] = ..., cluster: _Optional[int] = ..., indicators: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GenreCount(_message.Message):
    __slots__ = ("genre", "items")
    GENRE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    genre: str
    items: int
    def __init__(self, genre: _Optional[str] = ..., items: _Optional[int] = ...) -> None: ...

class HistoryItem(_message.Message):
    __slots__ = ("item_id", "title", "event_type", "timestamp")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    title: str
    event_type: EventType
    timestamp: int
    def __init__(self, item_id: _Optional[str] = ..., title: _Optional[str] = ..., event_type: _Optional[_Union[EventType, str]] = ..., timestamp: _Optional[int] = ...) -> None: ...

class CustomerProfile(_message.Message):
    __slots__ = ("user_id", "demographics", "value", "top_genres", "recent_items", "events_by_type", "history_length")
    class EventsByTypeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEMOGRAPHICS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TOP_GENRES_FIELD_NUMBER: _ClassVar[int]
    RECENT_ITEMS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_BY_TYPE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    demographics: Demographics
    value: CustomerValue
    top_genres: _containers.RepeatedCompositeFieldContainer[GenreCount]
    recent_items: _containers.RepeatedCompositeFieldContainer[HistoryItem]
    events_by_type: _containers.ScalarMap[str, int]
    history_length: int
    def __init__(self, user_id: _Optional[str] = ..., demographics: _Optional[_Union[Demographics, _Mapping]] = ..., value: _Optional[_Union[CustomerValue, _Mapping]] = ..., top_genres: _Optional[_Iterable[_Union[GenreCount, _Mapping]]] = ..., recent_items: _Optional[_Iterable[_Union[HistoryItem, _Mapping]]] = ..., events_by_type: _Optional[_Mapping[str, int]] = ..., history_length: _Optional[int] = ...) -> None: ...
