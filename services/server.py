"""The gRPC Recommender service and the server that hosts it with the standard health service."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent import futures

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cascade.artifacts import ArtifactStore
from cascade.config import AppConfig
from cascade.errors import InvalidArgumentError, NotReadyError
from cascade.features import encode_age, encode_gender
from ranking.features import UserRow
from services.api import recommender_pb2 as pb
from services.api import recommender_pb2_grpc as pb_grpc
from services.feature_store import HistoryEvent, OnlineFeatureStore, UserState
from services.interceptors import ErrorInterceptor
from services.models import ServingModels
from services.pipeline import RecommendationPipeline, UserContext
from services.validation import (
    check_demographics,
    check_k,
    check_request_id,
    check_timestamp,
    parse_exclude_ids,
    parse_id,
)

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name
_EVENT_TYPES = frozenset(v.number for v in pb.EventType.DESCRIPTOR.values) - {pb.EVENT_TYPE_UNSPECIFIED}


class RecommenderService(pb_grpc.RecommenderServicer):
    def __init__(self, config: AppConfig, store: OnlineFeatureStore):
        self.config = config
        self.store = store
        self._pipeline: RecommendationPipeline | None = None

    @property
    def ready(self) -> bool:
        return self._pipeline is not None

    def install(self, models: ServingModels) -> None:
        """Swap in a loaded set of models; requests in flight finish on the ones they started with."""
        self._pipeline = RecommendationPipeline(models, self.config)

    def _require_pipeline(self) -> RecommendationPipeline:
        pipeline = self._pipeline
        if pipeline is None:
            raise NotReadyError("models and index are still loading")
        return pipeline

    def _context(
        self,
        pipeline: RecommendationPipeline,
        user_id: int,
        state: UserState,
        demographics: tuple[str, int, str],
    ) -> UserContext:
        schema = pipeline.models.schema
        history = schema.item_index([e.item_id for e in state.history])
        seen = schema.item_index(np.fromiter(state.seen, dtype=np.int64, count=len(state.seen)))
        if state.features is not None:
            profile = state.features
            gender, age, occupation = (
                profile.get("gender", ""),
                int(profile.get("age", -1) or -1),
                profile.get("occupation", ""),
            )
            has_profile = True
        else:
            gender, age, occupation = demographics
            has_profile = bool(gender or age or occupation)
            age = age if age > 0 else -1
        row = UserRow(
            user=int(schema.user_index([user_id])[0]),
            gender=int(encode_gender([gender])[0]),
            age=int(encode_age([age])[0]),
            occupation=int(schema.encode_occupation([occupation])[0]),
        )
        return UserContext(
            row=row, history=history[history > 0], seen=seen[seen > 0], has_profile=has_profile
        )

    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> pb.RecommendResponse:
        started = time.perf_counter()
        user_id = parse_id("user_id", request.user_id)
        k = check_k(request.k, self.config.serving.max_k)
        exclude_ids = parse_exclude_ids(list(request.exclude_item_ids), self.config.serving.max_exclude_ids)
        request_id = check_request_id(request.request_id) or uuid.uuid4().hex
        demo = request.demographics
        demographics = check_demographics(demo.gender, demo.age, demo.occupation)
        pipeline = self._require_pipeline()
        models = pipeline.models
        state = self.store.get_user_state(user_id, self.config.features.history_length)
        features_done = time.perf_counter()
        ctx = self._context(pipeline, user_id, state, demographics)
        exclude = models.schema.item_index(exclude_ids)
        result = pipeline.recommend(ctx, k, exclude[exclude > 0])
        serialise_start = time.perf_counter()
        item_ids = models.schema.item_id_of(result.items)
        response = pb.RecommendResponse(
            request_id=request_id,
            items=[
                pb.RecommendedItem(item_id=str(i), title=models.titles[idx], score=float(s), source=src)
                for i, idx, s, src in zip(
                    item_ids.tolist(), result.items.tolist(), result.scores.tolist(), result.sources
                )
            ],
            model_versions=pb.ModelVersions(**models.versions),
            new_user=state.features is None,
        )
        response.stage_ms.update(result.stage_ms)
        response.stage_ms["features"] = (features_done - started) * 1e3
        response.stage_ms["serialise"] = (time.perf_counter() - serialise_start) * 1e3
        return response

    def RecordEvent(
        self, request: pb.RecordEventRequest, context: grpc.ServicerContext
    ) -> pb.RecordEventResponse:
        user_id = parse_id("user_id", request.user_id)
        item_id = parse_id("item_id", request.item_id)
        if request.event_type not in _EVENT_TYPES:
            raise InvalidArgumentError(
                "event_type", f"must be one of {sorted(_EVENT_TYPES)}, got {request.event_type}"
            )
        timestamp = check_timestamp(request.timestamp)
        pipeline = self._require_pipeline()
        if pipeline.models.schema.item_index([item_id])[0] == 0:
            raise InvalidArgumentError("item_id", f"no item {item_id} in the catalogue")
        length = self.store.record_event(
            user_id,
            HistoryEvent(item_id, int(request.event_type), timestamp),
            self.config.features.history_length,
        )
        return pb.RecordEventResponse(history_length=length)


class CascadeServer:
    """A grpc server with the Recommender and health services; NOT_SERVING until models are loaded."""

    def __init__(self, config: AppConfig, store: OnlineFeatureStore):
        self.config = config
        self.service = RecommenderService(config, store)
        self.health = health.HealthServicer()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.serving.workers, thread_name_prefix="cascade-rpc"),
            interceptors=[ErrorInterceptor()],
            options=[("grpc.so_reuseport", 0)],
        )
        pb_grpc.add_RecommenderServicer_to_server(self.service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.port: int | None = None
        self._stopped = threading.Event()

    def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def start(self) -> int:
        """Bind and start serving (health NOT_SERVING); returns the bound port."""
        address = f"{self.config.serving.host}:{self.config.serving.port}"
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"could not bind {address}")
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._server.start()
        logger.info("gRPC server listening on %s:%d", self.config.serving.host, self.port)
        return self.port

    def load_models(self) -> ServingModels:
        models = ServingModels.load(ArtifactStore(self.config.artifacts_dir))
        self.service.install(models)
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        return models

    def stop(self, grace_s: float = 5.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._server.stop(grace_s).wait()
        logger.info("gRPC server stopped")

    def wait(self) -> None:
        self._server.wait_for_termination()
