"""The gRPC Recommender service and the server that hosts it with the standard health service."""

from __future__ import annotations

import gc
import hashlib
import logging
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent import futures

import grpc
import numpy as np
import redis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cascade.config import AppConfig
from cascade.core.errors import (
    ArtifactError,
    ConfigError,
    DeadlineExceededError,
    DependencyUnavailableError,
    InvalidArgumentError,
    NotFoundError,
    NotReadyError,
)
from cascade.core.logs import request_id_var
from cascade.core.privacy import Pseudonym, Pseudonymiser
from cascade.core.schema import EVENT_TYPES, FeatureSchema, encode_age, encode_gender, native_id
from cascade.customers.live import live_value
from cascade.customers.value_bundle import INDICATOR_PREFIX
from cascade.data.forgotten import DenyList
from cascade.ranking.bundle import RANKING
from cascade.ranking.features import UserRow
from cascade.rerank.engine import SECONDS_PER_DAY
from cascade.rerank.rules_file import UserTraits
from cascade.serving.admission import MethodExecutor
from cascade.serving.api import recommender_pb2 as pb
from cascade.serving.api import recommender_pb2_grpc as pb_grpc
from cascade.serving.artifact_check import check_in_child
from cascade.serving.auth import AuthInterceptor, is_loopback, key_of, keyring_of
from cascade.serving.breaker import BreakerState
from cascade.serving.catalogue_changes import CatalogueChanges, CatalogueState, ItemRecord
from cascade.serving.catalogue_overlay import with_catalogue
from cascade.serving.deadline import Deadline
from cascade.serving.feature_store import HistoryEvent, OnlineFeatureStore, UserState
from cascade.serving.feature_store.base import BLOCKED, QUARANTINED
from cascade.serving.feature_store.connect import REDIS_CLIENTS
from cascade.serving.feature_store.resilient import ResilientFeatureStore
from cascade.serving.guard import EventGuard
from cascade.serving.interceptors import MethodPoolRouter, ServiceInterceptor
from cascade.serving.metrics import ServerMetrics
from cascade.serving.models import ServingModels, served_versions
from cascade.serving.paging import PageCursor, decode_token, encode_token, request_digest
from cascade.serving.pipeline import (
    Plan,
    Recommendation,
    RecommendationPipeline,
    RecommendOptions,
    UserContext,
)
from cascade.serving.rules_source import RulesSource
from cascade.serving.tls import ServerCertificates
from cascade.serving.tracing import Tracing
from cascade.serving.validation import (
    check_attributes,
    check_budget_ms,
    check_demographics,
    check_event_id,
    check_k,
    check_page_size,
    check_rating,
    check_request_id,
    check_request_time,
    check_surface,
    check_timestamp,
    check_title,
    check_year,
    parse_exclude_ids,
    parse_genres,
    parse_id,
)

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name
ADMIN_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CatalogueAdmin"].full_name
GUARD_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GuardAdmin"].full_name
PRIVACY_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PrivacyAdmin"].full_name
privacy_audit_logger = logging.getLogger("cascade.privacy.audit")
MAX_LISTED_FLAGS = 1000
MAX_GUARD_REASON = 256
# Readiness of the service's dependencies, apart from its liveness: NOT_SERVING while the feature store's
# breaker is open. The service itself stays SERVING then (it answers, degraded).
FEATURE_STORE_HEALTH = "cascade.feature_store"
_EVENT_TYPES = frozenset(v.number for v in pb.EventType.DESCRIPTOR.values) - {pb.EVENT_TYPE_UNSPECIFIED}
_EVENT_NAMES = {code: name for name, code in EVENT_TYPES.items()}
# The server's own pool, beside each method's: health checks, reflection and unknown methods
_RESERVE_THREADS = 4
# Threads that answer calls beyond a method's queue, each with an immediate RESOURCE_EXHAUSTED
_REFUSAL_THREADS = 2
_NOBODY = UserState.nobody()
DEADLINE_SHRUNK = "deadline_shrunk"


def resilient_store(
    store: OnlineFeatureStore | ResilientFeatureStore,
    config: AppConfig,
    metrics: ServerMetrics | None = None,
    on_breaker_change=None,
) -> ResilientFeatureStore:
    """``store`` behind the bounded waits, breaker and stale cache of ``serving.feature_store``."""
    if isinstance(store, ResilientFeatureStore):
        return store
    fs = config.serving.feature_store
    return ResilientFeatureStore(
        store,
        timeout_s=fs.timeout_ms / 1e3,
        read_threads=fs.read_threads,
        max_pending_reads=fs.max_pending_reads,
        breaker_failures=fs.breaker_failures,
        breaker_reset_s=fs.breaker_reset_s,
        stale_cache_size=fs.stale_cache_size,
        stale_max_age_s=fs.stale_max_age_s,
        on_breaker_change=on_breaker_change,
        on_lookup=(lambda outcome: metrics.feature_lookups.labels(outcome).inc()) if metrics else None,
    )


class RecommenderService(pb_grpc.RecommenderServicer):
    def __init__(
        self,
        config: AppConfig,
        store: OnlineFeatureStore | ResilientFeatureStore,
        metrics: ServerMetrics | None = None,
        tracing: Tracing | None = None,
    ):
        self.config = config
        self.store = resilient_store(store, config, metrics)
        self.metrics = metrics
        self.tracing = tracing or Tracing(None)
        # the store's own key when it has one: what logs and audits say must match its keys
        self.pseudonyms: Pseudonymiser = (
            getattr(self.store.backend, "pseudonyms", None) or config.pseudonyms()
        )
        self.guard = EventGuard(
            config.guard,
            self.store,
            config.artifact_store(),
            config.features.history_length,
            self.pseudonyms,
            on_event=(lambda outcome: metrics.guard_events.labels(outcome).inc()) if metrics else None,
            on_flag=(lambda by: metrics.guard_flags.labels(by).inc()) if metrics else None,
        )
        # who a call comes from, for the guard's per-client limit: the API key's id (CascadeServer sets it
        # when keys are configured), else the peer's address
        self.client_of: Callable[[grpc.ServicerContext], str] = _peer_host
        self._pipeline: RecommendationPipeline | None = None
        # read now: a server never starts on a rules file that does not validate
        self.rules = RulesSource(config.rerank.rules_path)
        client = getattr(self.store.backend, "client", None)
        self.catalogue = CatalogueChanges(client) if isinstance(client, REDIS_CLIENTS) else None
        self._catalogue_applied: CatalogueState | None = None  # what the installed pipeline applies
        self._base_models: ServingModels | None = None  # the installed models as loaded, no change applied
        self._catalogue_lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._pipeline is not None

    @property
    def pipeline(self) -> RecommendationPipeline | None:
        """The installed pipeline, None before the first models load."""
        return self._pipeline

    def install(self, models: ServingModels) -> None:
        """Swap in a loaded set of models, with the catalogue's changes applied and warmed up by one request
        first; requests in flight finish on the ones they started with."""
        with self._catalogue_lock:
            state = self._read_catalogue() or self._catalogue_applied
            # new models keep the catalogue's changes from their first request
            pipeline = self._pipeline_for(models, state)
            logger.info("models warmed up in %.2f s", pipeline.warm_up())
            self._base_models = models
            self._pipeline = pipeline
            self._catalogue_applied = state

    def _pipeline_for(self, models: ServingModels, state: CatalogueState | None) -> RecommendationPipeline:
        """A pipeline on ``models`` (as loaded) with the catalogue's added and replaced items and its
        deletions."""
        if state is not None and state.items:
            models = with_catalogue(models, state.items)
        pipeline = RecommendationPipeline(models, self.config, self.rules.current)
        if state is not None:
            pipeline.use_deleted(state.deleted)
        return pipeline

    def _read_catalogue(self) -> CatalogueState | None:
        """The catalogue's changes, None when there is no Redis to read them from or it cannot be read (the
        changes applied already stay; the watcher reads again)."""
        if self.catalogue is None:
            return None
        try:
            return self.catalogue.state()
        except (redis.RedisError, OSError) as exc:
            logger.warning("catalogue changes not read (%s); reading again later", type(exc).__name__)
            return None

    def refresh_catalogue(self) -> bool:
        """Apply the catalogue's changes when its version moved since the installed pipeline's; True when
        it did. Cheap when nothing changed: one GET."""
        if self.catalogue is None or self._pipeline is None:
            return False
        try:
            version = self.catalogue.version()
        except (redis.RedisError, OSError):
            return False
        applied = self._catalogue_applied
        if applied is not None and applied.version == version:
            return False
        with self._catalogue_lock:
            state = self._read_catalogue()
            pipeline, base = self._pipeline, self._base_models
            if state is None or pipeline is None or base is None:
                return False
            if applied is not None and applied.items == state.items:
                pipeline.use_deleted(state.deleted)  # deletions only: the rules recompiled, nothing else
            else:  # items added or replaced: the catalogue's tables and index grow; a new pipeline
                fresh = self._pipeline_for(base, state)
                fresh.costs = pipeline.costs
                fresh.warm_up()
                self._pipeline = fresh
            self._catalogue_applied = state
        logger.info(
            "catalogue version %d in force: %d items added or replaced, %d deleted",
            state.version, len(state.items), len(state.deleted),
        )  # fmt: skip
        return True

    def reload_rules_if_changed(self) -> bool:
        """Swap in the rules file's new content, if it changed; True when a swap happened. A file that does
        not validate, or names a genre or pinned item the served catalogue lacks, is refused (logged once,
        counted in cascade_rules_reload_failures_total) and the rules before it keep serving."""
        try:
            changed = self.rules.poll()
        except ConfigError as exc:
            self._rules_refused(exc)
            return False
        if changed is None:
            return False
        stamp, rules = changed
        pipeline = self._pipeline
        if pipeline is not None:
            try:
                pipeline.use_rules(rules)
            except ConfigError as exc:
                self.rules.refuse(stamp)
                self._rules_refused(exc)
                return False
        self.rules.accept(stamp, rules)
        logger.info("rules %s in force (%d rules)", rules.version, len(rules.rules))
        return True

    def _rules_refused(self, error: ConfigError) -> None:
        if self.metrics is not None:
            self.metrics.rules_reload_failures.inc()
        logger.warning("refused the rules file; the rules before it keep serving: %s", error)

    def versions(self, pipeline: RecommendationPipeline) -> pb.ModelVersions:
        return pb.ModelVersions(**pipeline.models.versions, rules=pipeline.rules.version)

    def require_pipeline(self) -> RecommendationPipeline:
        """The installed pipeline; UNAVAILABLE until the first models load."""
        pipeline = self._pipeline
        if pipeline is None:
            raise NotReadyError("models and index are still loading")
        return pipeline

    def user_context(
        self,
        pipeline: RecommendationPipeline,
        user_id: str,
        state: UserState,
        demographics: tuple[str, int, str, str],
        at: float | None = None,
    ) -> UserContext:
        schema = pipeline.models.schema
        history = schema.item_index(state.history_items)
        seen = schema.item_index(state.seen)
        tier, user_value = "", 0.0
        if state.features is not None:
            profile = state.features
            gender, age, occupation, zip_code = (
                profile.get("gender", ""),
                int(profile.get("age", -1) or -1),
                profile.get("occupation", ""),
                profile.get("zip_code", ""),
            )
            # the batch's tier and value, moved by what the user did since the load (customers.live)
            value = live_value(profile, state.activity, self.store.value_scale, time.time())
            if value is not None:
                tier, user_value = value.tier, value.current_value / 5.0
            has_profile = True
        else:
            gender, age, occupation, zip_code = demographics
            has_profile = bool(gender or age or occupation or zip_code)
            age = age if age > 0 else -1
        row = UserRow(
            # a forgotten user's row in the models was learnt from what they asked to be forgotten
            user=0 if state.forgotten else int(schema.user_index([user_id])[0]),
            gender=int(encode_gender([gender])[0]),
            age=int(encode_age([age])[0]),
            occupation=int(schema.encode_occupation([occupation])[0]),
            zip=int(schema.encode_zip([zip_code])[0]),
            value=user_value,
        )
        known = history > 0
        events = np.column_stack([history, state.history_events])[known]
        return UserContext(
            row=row,
            history=history[known],
            seen=seen[seen > 0],
            has_profile=has_profile,
            at=at,
            traits=UserTraits(new_user=not len(state.history_items), gender=gender, age=age, tier=tier),
            events=events,
        )

    def _filters(
        self, pipeline: RecommendationPipeline, include: list[str], exclude: list[str]
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The request's include_genres and exclude_genres as the catalogue's genre ids."""
        attributes = pipeline.models.attributes
        known = attributes.genre_names if attributes is not None else ()
        return parse_genres("include_genres", include, known), parse_genres("exclude_genres", exclude, known)

    def _deadline(self, context: grpc.ServicerContext | None, budget_ms: int, method: str) -> Deadline:
        """The call's deadline; a call whose deadline has already passed is dropped before any work."""
        deadline = Deadline.of_call(context, budget_ms, self.config.serving.deadline_margin_ms / 1e3)
        self._drop_if_late(deadline, method)
        return deadline

    def _drop_if_late(self, deadline: Deadline, method: str) -> None:
        if deadline.expired:
            if self.metrics is not None:
                self.metrics.dropped_late.labels(method).inc()
            raise DeadlineExceededError(f"{method}: the deadline passed before the answer was ready")

    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> pb.RecommendResponse:
        started = time.perf_counter()
        started_ns = time.time_ns()
        serving = self.config.serving
        deadline = self._deadline(context, check_budget_ms(request.budget_ms), "Recommend")
        user_id = parse_id("user_id", request.user_id)
        page_size = check_page_size(request.page_size, serving.max_k)
        k = page_size or check_k(request.k, serving.max_k)
        exclude_ids = parse_exclude_ids(list(request.exclude_item_ids), serving.max_exclude_ids)
        request_id = check_request_id(request.request_id) or _current_request_id()
        demo = request.demographics
        demographics = check_demographics(demo.gender, demo.age, demo.occupation, demo.zip_code)
        surface = check_surface(request.surface)
        at = check_request_time(request.timestamp)
        if request.page_token and not page_size:
            raise InvalidArgumentError("page_token", "needs the page_size it was issued with")
        pipeline = self.require_pipeline()
        models = pipeline.models
        include, exclude_genres = self._filters(
            pipeline, list(request.include_genres), list(request.exclude_genres)
        )
        cursor = None
        digest = ""
        if page_size:
            digest = request_digest(
                user_id, surface, list(request.include_genres), list(request.exclude_genres), exclude_ids
            )
        if request.page_token:
            cursor = decode_token(
                request.page_token,
                digest,
                time.time(),
                serving.page_token_ttl_s,
                max_chars=256 + 200 * serving.max_paged_items,
            )
            at = cursor.at  # every page is answered as of the first one's time
        served = list(cursor.served) if cursor is not None else []
        offset = len(served)
        if page_size:
            k = min(page_size, serving.max_paged_items - offset)
        seed = cursor.seed if cursor is not None else _seed_of(request_id)
        reasons: list[str] = []
        share = serving.feature_store.read_share
        store_user = _store_user(models.schema, user_id)
        lookup = self.store.read_user(store_user, models.history_length, deadline.remaining_s() * share)
        if lookup.degraded_reason is not None:
            reasons.append(lookup.degraded_reason)
        state = lookup.state if lookup.state is not None else _NOBODY
        ctx = self.user_context(pipeline, user_id, state, demographics, at)
        exclude = models.schema.item_index(exclude_ids + served)
        counters = pipeline.rules.counted_pins
        impressions = self.store.impressions(store_user, counters) if counters else {}
        if impressions is None:  # the store cannot say: every capped pin counts as spent
            impressions = {name: 2**31 for name in counters}
        options = RecommendOptions(surface, include, exclude_genres, seed + offset, impressions, offset)
        features_done = time.perf_counter()
        plan = pipeline.costs.plan(deadline.remaining_s() * 1e3)
        if plan is not Plan.FULL:
            reasons.append(DEADLINE_SHRUNK)
        self._drop_if_late(deadline, "Recommend")
        if k > 0:
            result = pipeline.recommend(ctx, k, exclude[exclude > 0], plan, request.explain, options)
        else:  # the pages reached serving.max_paged_items
            result = Recommendation.empty()
        self._drop_if_late(deadline, "Recommend")
        if result.shown_pins:
            self.store.count_impressions(
                store_user,
                [(pin.name, pin.impression_window_days * SECONDS_PER_DAY) for pin in result.shown_pins],
            )
        serialise_start = time.perf_counter()
        item_ids = models.schema.item_id_of(result.items)
        propensities = (
            result.propensities.tolist() if result.propensities is not None else [1.0] * len(result.items)
        )
        response = pb.RecommendResponse(
            request_id=request_id,
            items=[
                pb.RecommendedItem(
                    item_id=str(i),
                    title=models.titles[idx],
                    score=s,
                    source=channel,
                    channel_score=cs,
                    propensity=p,
                    position=offset + position + 1,
                )
                for position, (i, idx, s, channel, cs, p) in enumerate(
                    zip(
                        item_ids.tolist(),
                        result.items.tolist(),
                        result.scores.tolist(),
                        result.channels,
                        result.channel_scores.tolist(),
                        propensities,
                    )
                )
            ],
            model_versions=self.versions(pipeline),
            new_user=lookup.state is not None and state.features is None,
            degraded=bool(reasons),
            degraded_reasons=reasons,
            tier=ctx.traits.tier if ctx.traits is not None else "",
        )
        if page_size and k > 0 and len(result.items) == k and offset + k < serving.max_paged_items:
            response.next_page_token = encode_token(
                PageCursor(
                    at=ctx.at if ctx.at is not None else time.time(),
                    seed=seed,
                    served=(*map(str, served), *map(str, item_ids.tolist())),
                    issued=time.time(),
                    digest=digest,
                )
            )
        if request.explain:
            _explain(response.items, result.ranker_scores, result.fired)
            response.removed_by_rule.update(result.removed)
        stage_ms = {"features": (features_done - started) * 1e3, **result.stage_ms}
        stage_ms["serialise"] = (time.perf_counter() - serialise_start) * 1e3
        response.stage_ms.update(stage_ms)
        if self.metrics is not None:
            self.metrics.observe_stages(stage_ms)
            for reason in reasons:
                self.metrics.degraded.labels(reason).inc()
        if self.tracing.enabled:
            self.tracing.record_stages(
                started_ns,
                stage_ms,
                {
                    "cascade.plan": result.plan.value,
                    "cascade.degraded_reasons": reasons,
                    "cascade.candidates_k": k,
                    **{f"cascade.version.{kind}": version for kind, version in models.versions.items()},
                },
            )
        return response

    def SimilarItems(
        self, request: pb.SimilarItemsRequest, context: grpc.ServicerContext
    ) -> pb.SimilarItemsResponse:
        self._deadline(context, 0, "SimilarItems")
        item_id = parse_id("item_id", request.item_id)
        k = check_k(request.k, self.config.serving.max_similar_k)
        request_id = check_request_id(request.request_id) or _current_request_id()
        exclude_ids = parse_exclude_ids(list(request.exclude_item_ids), self.config.serving.max_exclude_ids)
        surface = check_surface(request.surface)
        pipeline = self.require_pipeline()
        models = pipeline.models
        include, exclude_genres = self._filters(
            pipeline, list(request.include_genres), list(request.exclude_genres)
        )
        item = int(models.schema.item_index([item_id])[0])
        if item == 0:
            raise NotFoundError(f"item_id: no item {item_id[:64]!r} in the catalogue")
        exclude = models.schema.item_index(exclude_ids)
        result = pipeline.similar_items(
            item,
            k,
            exclude[exclude > 0],
            RecommendOptions(surface=surface, include_genres=include, exclude_genres=exclude_genres),
            request.explain,
        )
        response = pb.SimilarItemsResponse(
            request_id=request_id,
            items=[
                pb.SimilarItem(item_id=str(i), title=models.titles[idx], score=s)
                for i, idx, s in zip(
                    models.schema.item_id_of(result.items).tolist(),
                    result.items.tolist(),
                    result.scores.tolist(),
                )
            ],
            model_versions=self.versions(pipeline),
        )
        if request.explain:
            _explain(response.items, result.base_scores, result.fired)
            response.removed_by_rule.update(result.removed)
        return response

    def RecordEvent(
        self, request: pb.RecordEventRequest, context: grpc.ServicerContext
    ) -> pb.RecordEventResponse:
        self._deadline(context, 0, "RecordEvent")
        user_id = parse_id("user_id", request.user_id)
        item_id = parse_id("item_id", request.item_id)
        if request.event_type not in _EVENT_TYPES:
            raise InvalidArgumentError(
                "event_type", f"must be one of {sorted(_EVENT_TYPES)}, got {request.event_type}"
            )
        pipeline = self.require_pipeline()
        rating = check_rating(
            request.rating,
            request.event_type == pb.EVENT_TYPE_RATE,
            pipeline.models.schema.rating_range,
        )
        event_id = check_event_id(request.event_id)
        timestamp = check_timestamp(request.timestamp)
        schema = pipeline.models.schema
        item = int(schema.item_index([item_id])[0])
        if item == 0:
            raise InvalidArgumentError("item_id", "no such item in the catalogue")
        # stored as the catalogue spells the id: "042" and "42" are one item of a numeric catalogue
        canonical = native_id(schema.item_id_of([item])[0])
        self.guard.admit(self.client_of(context), canonical)
        user = _store_user(schema, user_id)
        event = HistoryEvent(canonical, int(request.event_type), timestamp, rating)
        result = self.store.record_event(
            user,
            event,
            self.config.features.history_length,
            event_id or None,
            self.config.serving.event_dedupe_window_s,
            self.guard.checks,
        )
        self.guard.settle(user, event, result)
        return pb.RecordEventResponse(
            history_length=result.history_length,
            duplicate=result.duplicate,
            quarantined=result.outcome == QUARANTINED,
        )

    def GetCustomerProfile(
        self, request: pb.CustomerProfileRequest, context: grpc.ServicerContext
    ) -> pb.CustomerProfile:
        deadline = self._deadline(context, 0, "GetCustomerProfile")
        user_id = parse_id("user_id", request.user_id)
        pipeline = self.require_pipeline()
        models = pipeline.models
        lookup = self.store.read_user(
            _store_user(models.schema, user_id), models.history_length, max(deadline.remaining_s(), 0.0)
        )
        if lookup.state is None:
            raise DependencyUnavailableError(
                "feature store unavailable; no profile to read, retry later",
                retry_after_s=max(
                    self.store.breaker_for(_store_user(models.schema, user_id)).retry_after_s(), 0.1
                ),
            )
        state = lookup.state
        if state.features is None and not len(state.history_items):
            # the caller knows whom it asked for; the message (which the log repeats) does not say
            raise NotFoundError("user_id: no such customer in the feature store")
        profile = state.features or {}
        answer = pb.CustomerProfile(
            user_id=user_id,
            demographics=pb.Demographics(
                gender=profile.get("gender", ""),
                age=max(int(profile.get("age", 0) or 0), 0),
                occupation=profile.get("occupation", ""),
            ),
            history_length=len(state.history_items),
        )
        value = live_value(profile, state.activity, self.store.value_scale, time.time())
        if value is not None:
            answer.value.CopyFrom(
                pb.CustomerValue(
                    recency_score=value.recency_score, frequency_score=value.frequency_score,
                    monetary_score=value.monetary_score, current_value=value.current_value,
                    value_band=value.value_band, tier=value.tier, moved_since_load=value.moved,
                    events_since_load=value.events_since_load,
                )
            )  # fmt: skip
            if profile.get("value_k"):
                answer.value.value_k = float(profile["value_k"])
                answer.value.k_tier = profile.get("k_tier", "")
                answer.value.cluster = int(profile.get("cluster", 0) or 0)
                for field, text in profile.items():
                    if field.startswith(INDICATOR_PREFIX) and text:
                        answer.value.indicators[field.removeprefix(INDICATOR_PREFIX)] = float(text)
        history = models.schema.item_index(state.history_items)
        known = history > 0
        # the catalogue as served: items added since training have their genres and titles there too
        attributes = models.attributes
        counts = Counter(
            attributes.genre_names[g - 1]
            for row in attributes.genres[history[known]]
            for g in row.tolist()
            if g > 0
        )
        for genre, items in counts.most_common(5):
            answer.top_genres.add(genre=genre, items=items)
        for item, index, (event_type, timestamp) in list(
            zip(state.history_items.tolist(), history.tolist(), state.history_events.tolist())
        )[:10]:
            title = str(models.titles[index]) if 0 < index < len(models.titles) else ""
            answer.recent_items.add(
                item_id=str(item), title=title, event_type=event_type, timestamp=timestamp
            )
        for event_type, count in Counter(int(row[0]) for row in state.history_events.tolist()).items():
            answer.events_by_type[_EVENT_NAMES.get(event_type, str(event_type))] = count
        return answer


class CatalogueAdminService(pb_grpc.CatalogueAdminServicer):
    """Catalogue changes between trainings (``CatalogueChanges``), applied by ``service`` at once."""

    def __init__(self, service: RecommenderService):
        self.service = service

    def UpsertItem(
        self, request: pb.UpsertItemRequest, context: grpc.ServicerContext
    ) -> pb.UpsertItemResponse:
        item_id, request_id, schema = self._parse(request)
        parsed = schema.parse_item_ids([item_id])[0]
        served = int(schema.item_index([item_id])[0]) > 0
        if schema.numeric_ids and int(parsed) < 0:
            raise InvalidArgumentError("item_id", "this catalogue's item ids are integers")
        genres = parse_genres("genres", list(request.genres), schema.genres)
        record = ItemRecord(
            item_id=str(native_id(parsed)),
            title=check_title(request.title),
            genres=tuple(schema.genres[genre - 1] for genre in genres),
            year=check_year(request.year),
            attributes=check_attributes(dict(request.attributes)),
        )
        first_upsert, version = self._change(lambda catalogue: catalogue.upsert(record), "changed")
        created = first_upsert and not served  # a trained item's first upsert replaces its content
        return pb.UpsertItemResponse(request_id=request_id, created=created, catalogue_version=version)

    def _parse(self, request: pb.UpsertItemRequest | pb.DeleteItemRequest) -> tuple[str, str, FeatureSchema]:
        """The request's item id and request id, and the served catalogue's schema."""
        item_id = parse_id("item_id", request.item_id)
        request_id = check_request_id(request.request_id) or _current_request_id()
        return item_id, request_id, self.service.require_pipeline().models.schema

    def _change(self, write: Callable[[CatalogueChanges], tuple[bool, int]], what: str) -> tuple[bool, int]:
        """Write a change to the catalogue in Redis (UNAVAILABLE when it cannot be), then put it in force on
        this server before the answer; the others follow within reload_interval_s."""
        catalogue = self.service.catalogue
        if catalogue is None:
            raise NotReadyError("catalogue changes need the feature store's Redis, which this server lacks")
        try:
            outcome = write(catalogue)
        except (redis.RedisError, OSError) as exc:
            raise DependencyUnavailableError(
                f"feature store unavailable ({type(exc).__name__}); item not {what}, retry later"
            ) from None
        self.service.refresh_catalogue()
        return outcome

    def DeleteItem(
        self, request: pb.DeleteItemRequest, context: grpc.ServicerContext
    ) -> pb.DeleteItemResponse:
        item_id, request_id, schema = self._parse(request)
        item = int(schema.item_index([item_id])[0])
        if item == 0:
            raise NotFoundError(f"item_id: no item {item_id[:64]!r} in the catalogue")
        canonical = native_id(schema.item_id_of([item])[0])
        deleted, version = self._change(lambda catalogue: catalogue.delete(canonical), "deleted")
        return pb.DeleteItemResponse(request_id=request_id, deleted=deleted, catalogue_version=version)


class GuardAdminService(pb_grpc.GuardAdminServicer):
    """The operators' view of the guard (``EventGuard``): list, clear and block users."""

    def __init__(self, service: RecommenderService):
        self.service = service

    def ListFlags(self, request: pb.ListFlagsRequest, context: grpc.ServicerContext) -> pb.ListFlagsResponse:
        if not 0 <= request.limit <= MAX_LISTED_FLAGS:
            raise InvalidArgumentError("limit", f"must be 0 (100) to {MAX_LISTED_FLAGS}, got {request.limit}")
        flags = self.service.guard.flags(request.limit or 100)
        return pb.ListFlagsResponse(
            flags=[
                pb.GuardFlag(
                    pseudonym=flag.pseudonym, state=flag.state, reason=flag.reason, score=flag.score,
                    since=int(flag.since), by=flag.by, quarantined_events=flag.quarantined,
                )
                for flag in flags
            ]
        )  # fmt: skip

    def ClearUser(self, request: pb.GuardUserRequest, context: grpc.ServicerContext) -> pb.GuardUserResponse:
        user = self._user(request)
        state, count = self.service.guard.clear(
            user, request.discard_quarantined, self.service.client_of(context)
        )
        return pb.GuardUserResponse(previous_state=state or "", events=count)

    def BlockUser(self, request: pb.GuardUserRequest, context: grpc.ServicerContext) -> pb.GuardUserResponse:
        user = self._user(request)
        if not request.reason.strip():
            raise InvalidArgumentError("reason", "say why the user is blocked (it goes to the audit)")
        if len(request.reason) > MAX_GUARD_REASON:
            raise InvalidArgumentError("reason", f"at most {MAX_GUARD_REASON} characters")
        by = self.service.client_of(context)
        _, previous = self.service.guard.decide(user, BLOCKED, request.reason, 1.0, by)
        return pb.GuardUserResponse(previous_state=previous)

    def _user(self, request: pb.GuardUserRequest) -> int | str:
        if request.pseudonym:
            if request.user_id:
                raise InvalidArgumentError("pseudonym", "give user_id or pseudonym, not both")
            try:
                return Pseudonym(request.pseudonym)
            except ValueError as exc:
                raise InvalidArgumentError("pseudonym", str(exc)) from None
        user_id = parse_id("user_id", request.user_id)
        return _store_user(self.service.require_pipeline().models.schema, user_id)


class PrivacyAdminService(pb_grpc.PrivacyAdminServicer):
    """Requests about a user's data: ForgetUser."""

    def __init__(self, service: RecommenderService):
        self.service = service

    def ForgetUser(
        self, request: pb.ForgetUserRequest, context: grpc.ServicerContext
    ) -> pb.ForgetUserResponse:
        user_id = parse_id("user_id", request.user_id)
        user = _store_user(self.service.require_pipeline().models.schema, user_id)
        pseudonyms = self.service.pseudonyms
        pseudonym = pseudonyms.of(user)
        # the deny-list first: should the store fail next, training already leaves the user out, and a retry
        # finishes the job
        folder = self.service.config.data.path
        deny_listed = already = False
        if (folder / "dataset.json").is_file():
            # a deny-list under another key is a DataError: FAILED_PRECONDITION, an operator's to settle
            already = not DenyList.add(folder, user, pseudonyms)
            deny_listed = True
        removed = self.service.store.forget_user(user)
        privacy_audit_logger.info(
            "forgot user", extra={"user": pseudonym, "removed": removed, "deny_listed": deny_listed,
                                  "by": self.service.client_of(context)},
        )  # fmt: skip
        return pb.ForgetUserResponse(
            pseudonym=pseudonym,
            removed=removed,
            deny_listed=deny_listed,
            already_deny_listed=already,
        )


def _peer_host(context: grpc.ServicerContext) -> str:
    """The caller's address without its port ("ipv4:10.0.0.7:51234" -> "ipv4:10.0.0.7")."""
    peer = context.peer() or "unknown"
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


def _store_user(schema: FeatureSchema, user_id: str) -> int | str:
    """The user's key in the feature store: an integer id as the integer (so "042" is user 42), anything else
    as sent, in a catalogue of integer user ids as in one of string ids."""
    if schema.numeric_ids:
        parsed = int(schema.parse_user_ids([user_id])[0])
        if parsed >= 0:
            return parsed
    return user_id


def _explain(items, ranker_scores: np.ndarray | None, fired: list[list[str]] | None) -> None:
    """Fill each response item's explanation: its score before rules and the rules that fired on it."""
    scores = ranker_scores.tolist() if ranker_scores is not None else [float("nan")] * len(items)
    for item, score, rules in zip(items, scores, fired or [[] for _ in items]):
        item.explanation.ranker_score = score
        item.explanation.rules.extend(rules)


def _seed_of(request_id: str) -> int:
    """The exploration seed of a request: its id's hash, so that a logged request can be replayed."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big") >> 1


def _current_request_id() -> str:
    """The id the interceptor gave this request (x-request-id), or a new one outside a served call."""
    current = request_id_var.get()
    return current if current != "-" else uuid.uuid4().hex


def freeze_long_lived_objects(after_reload: bool = False) -> int:
    """Move every object alive now (the loaded models, schema, titles: hundreds of thousands of containers
    at a million items) out of the cyclic collector's reach; returns how many are frozen.

    A full collection traverses every tracked object, a pause of the whole process (its RPC threads
    included) each time enough new objects have survived. Frozen objects are still freed by
    reference counting; after a reload the previous models' objects are unfrozen and collected first, so
    reference cycles among them do not outlive the swap."""
    if after_reload:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class CascadeServer:
    """A grpc server with the Recommender and health services; NOT_SERVING until models are loaded."""

    def __init__(
        self,
        config: AppConfig,
        store: OnlineFeatureStore,
        process_index: int = 0,
        freeze_loaded_models: bool = False,
        tracing: Tracing | None = None,
    ):
        """``freeze_loaded_models``: keep loaded models out of the cyclic collector's reach (see
        ``freeze_long_lived_objects``); process-wide, so for a process that only serves. ``tracing``:
        default from ``serving.tracing``."""
        self.config = config
        self.process_index = process_index
        self.freeze_loaded_models = freeze_loaded_models
        self.metrics = ServerMetrics()
        self.health = health.HealthServicer()
        self._serving = False  # the overall health is SERVING (models loaded, not draining)
        self.store = resilient_store(store, config, self.metrics, self._on_breaker_change)
        self.tracing = tracing or Tracing.configure(config.serving.tracing)
        if isinstance(getattr(self.store.backend, "client", None), REDIS_CLIENTS):
            self.tracing.instrument_redis(self.store.backend.client)
        self.service = RecommenderService(config, self.store, self.metrics, self.tracing)
        serving = config.serving
        wait_s = serving.max_queue_wait_ms / 1e3
        # each method in its own pool (admission.py); calls that find theirs full are refused in this one
        self._refusals = futures.ThreadPoolExecutor(_REFUSAL_THREADS, thread_name_prefix="cascade-refuse")
        self.executors = {
            method: MethodExecutor(method, workers, serving.queue_size, wait_s, self._refusals)
            for method, workers in (
                ("Recommend", serving.workers),
                ("SimilarItems", serving.similar_items_workers),
                ("RecordEvent", serving.record_event_workers),
            )
        }
        # Several processes share one port only when asked to; otherwise binding a taken port must fail.
        reuse_port = int(serving.processes > 1)
        interceptors: list[grpc.ServerInterceptor] = [
            ServiceInterceptor(SERVICE_NAME, self.executors, self.metrics),
            # the admin services: errors mapped and counted the same way, on the server's own pool
            ServiceInterceptor(ADMIN_SERVICE_NAME, {}, self.metrics),
            ServiceInterceptor(GUARD_SERVICE_NAME, {}, self.metrics),
            ServiceInterceptor(PRIVACY_SERVICE_NAME, {}, self.metrics),
        ]
        if self.tracing.enabled:  # outside admission, so that shed and refused calls have spans too
            interceptors.insert(0, self.tracing.server_interceptor())
        interceptors.insert(0, MethodPoolRouter(SERVICE_NAME, self.executors))  # whatever wraps the handler
        self.keys = keyring_of(serving.auth.api_keys_path, serving.auth.reload_interval_s)
        if self.keys.configured:  # outermost: a refused call takes no admission slot and decodes nothing
            refused = self.metrics.auth_refusals
            interceptors.insert(0, AuthInterceptor(self.keys, lambda m, r: refused.labels(m, r).inc()))
            self.service.client_of = self._key_id
        elif not is_loopback(serving.host) and not serving.auth.allow_unauthenticated:
            raise ConfigError(
                f"serving.host {serving.host} is not a loopback address and no API keys are configured "
                "(serving.auth.api_keys_path or CASCADE_API_KEYS): refusing to serve every caller that "
                "reaches the port; set serving.auth.allow_unauthenticated to allow it"
            )
        else:
            logger.warning(
                "NO AUTHENTICATION: no API keys are configured, so every caller that reaches %s may "
                "record events and read customer profiles (serving.auth.api_keys_path)",
                serving.host,
            )
        tls = serving.tls
        self._certificates = ServerCertificates(tls) if tls.serves else None
        if tls.serves:
            mutual = "mutual TLS: clients present a certificate" if tls.client_ca_file else "TLS"
            logger.info("the gRPC port serves %s (certificate %s)", mutual, tls.cert_file)
        elif not is_loopback(serving.host):
            logger.warning(
                "NO TLS on %s: calls, API keys and user data cross the network in the clear; set "
                "serving.tls.cert_file and key_file unless a proxy in front terminates TLS",
                serving.host,
            )
        admitted = sum(executor.capacity for executor in self.executors.values())
        self._server = grpc.server(
            # health checks, reflection and unknown methods; the service's methods run in their own pools
            futures.ThreadPoolExecutor(max_workers=_RESERVE_THREADS, thread_name_prefix="cascade-rpc"),
            interceptors=interceptors,
            options=[("grpc.so_reuseport", reuse_port)],
            # a backstop only: admission refuses first; refusals and the reserve pool's calls count too
            maximum_concurrent_rpcs=2 * admitted + _RESERVE_THREADS,
        )
        pb_grpc.add_RecommenderServicer_to_server(self.service, self._server)
        if config.serving.admin_enabled:
            pb_grpc.add_CatalogueAdminServicer_to_server(CatalogueAdminService(self.service), self._server)
            pb_grpc.add_GuardAdminServicer_to_server(GuardAdminService(self.service), self._server)
            pb_grpc.add_PrivacyAdminServicer_to_server(PrivacyAdminService(self.service), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        admin = (
            (ADMIN_SERVICE_NAME, GUARD_SERVICE_NAME, PRIVACY_SERVICE_NAME)
            if config.serving.admin_enabled
            else ()
        )
        served = (SERVICE_NAME, *admin)
        reflection.enable_server_reflection(
            (*served, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port: int | None = None
        self.process_port: int | None = None  # serving.process_ports + process_index, when configured
        self.metrics_port: int | None = None
        self._stopped = threading.Event()
        self._watcher: threading.Thread | None = None
        self._prober: threading.Thread | None = None
        self._failed_sets: set[frozenset[tuple[str, str]]] = set()  # model sets refused, never retried
        self._unresolved: str | None = None  # why the published versions do not resolve, logged once

    def _key_id(self, context: grpc.ServicerContext) -> str:
        """The id of the API key a call carried (the auth interceptor let it through, so it has one)."""
        key = key_of(context.invocation_metadata())
        caller = self.keys.caller(key) if key else None
        return f"key:{caller.key_id}" if caller is not None else _peer_host(context)

    def _on_breaker_change(self, state: BreakerState) -> None:
        self.metrics.breaker_state.set(state.value)
        ready = state is BreakerState.CLOSED
        self.health.set(
            FEATURE_STORE_HEALTH,
            health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING,
        )

    def _probe_feature_store(self, interval_s: float) -> None:
        """Every ``interval_s``, read the store's keyspace pointer (``ResilientFeatureStore.probe``): while
        the breaker is open this closes it soon after the store returns, traffic or not; while closed it
        shows an outage in readiness even without traffic, and follows a loader's keyspace switch."""
        while not self._stopped.wait(interval_s):
            self.store.probe()

    def _set_health(self, status: int) -> None:
        self._serving = status == health_pb2.HealthCheckResponse.SERVING  # /ready on the metrics port
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def start(self) -> int:
        """Bind and start serving (health NOT_SERVING); returns the bound port."""
        address = f"{self.config.serving.host}:{self.config.serving.port}"
        self.port = self._bind(address)
        if self.port == 0:
            raise RuntimeError(f"could not bind {address}")
        if self.config.serving.process_ports is not None:
            self.process_port = self._bind_own_port(self.config.serving.process_ports + self.process_index)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set(FEATURE_STORE_HEALTH, health_pb2.HealthCheckResponse.SERVING)
        self._server.start()
        self._prober = threading.Thread(
            target=self._probe_feature_store,
            args=(self.config.serving.feature_store.breaker_reset_s,),
            name="cascade-store-probe",
            daemon=True,
        )
        self._prober.start()
        logger.info("gRPC server listening on %s:%d", self.config.serving.host, self.port)
        if self.config.serving.metrics_port is not None:
            metrics_port = self.config.serving.metrics_port
            self.metrics_port = self.metrics.serve_http(
                metrics_port + self.process_index if metrics_port else 0,
                self.config.serving.host,
                serving=lambda: self._serving,
            )
        return self.port

    def _bind(self, address: str) -> int:
        """Add a port: TLS only when serving.tls has a certificate, else plaintext."""
        if self._certificates is not None:
            return self._server.add_secure_port(address, self._certificates.credentials())
        return self._server.add_insecure_port(address)

    def _bind_own_port(self, port: int) -> int:
        """This process's own address beside the shared one. The server's sockets all carry SO_REUSEPORT,
        which would let this port be shared silently with whatever already holds it; a plain bind first
        makes a taken port fail here instead."""
        host = self.config.serving.host
        bare = host.strip("[]")
        family = socket.AF_INET6 if ":" in bare else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.bind((bare, port))
        except OSError as exc:
            raise RuntimeError(f"serving.process_ports: {host}:{port} is taken ({exc.strerror})") from exc
        if self._bind(f"{host}:{port}") != port:
            raise RuntimeError(f"serving.process_ports: could not bind {host}:{port}")
        return port

    def _install(self, versions: dict[str, str]) -> ServingModels:
        """Check (in a child process), load and warm up ``versions``, then swap them in."""
        if self.config.serving.validate_artifacts_in_child:
            check_in_child(self.config, versions)
        models = ServingModels.load(self.config.artifact_store(), self.config, versions)
        self.service.install(models)  # answers a warm-up request first: a set that cannot is refused
        self.metrics.model_versions.info(models.versions)
        return models

    def _refuse(self, versions: dict[str, str], error: Exception) -> None:
        """Remember a model set that failed: it is not tried again (versions never change in place)."""
        self._failed_sets.add(frozenset(versions.items()))
        self.metrics.reload_failures.inc()
        logger.warning("refused model set %s: %s", versions, error)

    def load_models(self) -> ServingModels:
        """Load the published models at start: the current set, or when it fails to load (a corrupt file, a
        crash in a native parser) the set of the newest older ranker that loads, so that one bad
        publication never keeps the server from starting. Health turns SERVING."""
        store = self.config.artifact_store()
        current = store.require(RANKING).version
        candidates = [current, *(v for v in reversed(store.versions(RANKING)) if v < current)]
        first_error: Exception | None = None
        for ranking_version in candidates:
            try:
                versions = served_versions(store, ranking_version)
            except ArtifactError as exc:
                first_error = first_error or exc
                continue
            if frozenset(versions.items()) in self._failed_sets:
                continue
            try:
                models = self._install(versions)
            except Exception as exc:  # a candidate set that fails in any way is refused, not fatal
                first_error = first_error or exc
                self._refuse(versions, exc)
                continue
            if ranking_version != current:
                logger.warning(
                    "serving older ranking %s: the current %s does not load", ranking_version, current
                )
            if self.freeze_loaded_models:
                freeze_long_lived_objects()
            self._set_health(health_pb2.HealthCheckResponse.SERVING)
            return models
        raise ArtifactError(f"no published model set loads; the current one: {first_error}")

    def reload_if_published(self) -> bool:
        """Swap in newly published versions, if any; True when a swap happened.

        The new models are checked in a child process, then load beside the old ones, which keep answering
        until the swap, a single reference assignment, so no request fails or waits. A set that fails is
        logged once and never tried again; a ranker whose recall has no index yet waits for it."""
        store = self.config.artifact_store()
        try:
            published = served_versions(store)
        except ArtifactError as exc:
            if str(exc) != self._unresolved:
                self._unresolved = str(exc)
                logger.warning("not reloading: %s", exc)
            return False
        self._unresolved = None
        pipeline = self.service.pipeline
        if pipeline is not None and published == pipeline.models.versions:
            return False
        if frozenset(published.items()) in self._failed_sets:
            return False
        try:
            models = self._install(published)
        except Exception as exc:  # whatever a bad publication raises, the old models keep serving
            self._refuse(published, exc)
            return False
        if self.freeze_loaded_models:
            freeze_long_lived_objects(after_reload=True)
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        logger.info("reloaded models: %s", models.versions)
        return True

    def watch_artifacts(self) -> None:
        """Poll the artifact store every ``reload_interval_s`` in a daemon thread (0: never)."""
        interval = self.config.serving.reload_interval_s
        if interval <= 0 or self._watcher is not None:
            return

        def run() -> None:
            while not self._stopped.wait(interval):
                try:
                    self.reload_if_published()
                    self.service.reload_rules_if_changed()
                    self.service.refresh_catalogue()
                except Exception:  # the watcher must outlive any one bad publication
                    logger.exception("artifact watcher failed; retrying in %.1f s", interval)

        self._watcher = threading.Thread(target=run, name="cascade-artifact-watcher", daemon=True)
        self._watcher.start()

    def stop(
        self, drain_s: float | None = None, grace_s: float | None = None, hurry: threading.Event | None = None
    ) -> None:
        """Stop gracefully: health says NOT_SERVING at once while the port keeps answering for ``drain_s``
        (``serving.drain_s``), so that balancers stop sending; then new calls are refused and calls in
        flight get ``grace_s`` (``serving.shutdown_grace_s``) to finish. ``hurry`` set cuts the drain
        short (a second SIGTERM or Ctrl-C)."""
        if self._stopped.is_set():
            return
        drain_s = self.config.serving.drain_s if drain_s is None else drain_s
        grace_s = self.config.serving.shutdown_grace_s if grace_s is None else grace_s
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set(FEATURE_STORE_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)
        if drain_s > 0:
            logger.info("draining for %.1f s: health NOT_SERVING, still answering", drain_s)
            (hurry or threading.Event()).wait(drain_s)
        self._stopped.set()
        self._server.stop(grace_s).wait()
        for pool in (*self.executors.values(), self._refusals):
            pool.shutdown(wait=False, cancel_futures=True)
        self.store.close()
        self.metrics.close()
        self.tracing.shutdown()
        logger.info("gRPC server stopped")

    def wait(self) -> None:
        self._server.wait_for_termination()
