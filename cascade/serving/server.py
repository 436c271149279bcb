"""The gRPC Recommender service and the server that hosts it with the standard health service."""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
import uuid
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cascade.config import AppConfig
from cascade.core.artifacts import ArtifactStore
from cascade.core.errors import ArtifactError, InvalidArgumentError, NotFoundError, NotReadyError
from cascade.core.schema import encode_age, encode_gender
from cascade.ranking.features import UserRow
from cascade.serving.api import recommender_pb2 as pb
from cascade.serving.api import recommender_pb2_grpc as pb_grpc
from cascade.serving.feature_store import HistoryEvent, OnlineFeatureStore, UserState
from cascade.serving.interceptors import ErrorInterceptor
from cascade.serving.metrics import ServerMetrics
from cascade.serving.models import SERVED_KINDS, ServingModels
from cascade.serving.pipeline import RecommendationPipeline, UserContext
from cascade.serving.validation import (
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
    def __init__(self, config: AppConfig, store: OnlineFeatureStore, metrics: ServerMetrics | None = None):
        self.config = config
        self.store = store
        self.metrics = metrics
        self._pipeline: RecommendationPipeline | None = None

    @property
    def ready(self) -> bool:
        return self._pipeline is not None

    @property
    def pipeline(self) -> RecommendationPipeline | None:
        """The installed pipeline, None before the first models load."""
        return self._pipeline

    def install(self, models: ServingModels) -> None:
        """Swap in a loaded set of models, warmed up by one request first; requests in flight finish on the
        ones they started with."""
        pipeline = RecommendationPipeline(models, self.config)
        logger.info("models warmed up in %.2f s", pipeline.warm_up())
        self._pipeline = pipeline

    def require_pipeline(self) -> RecommendationPipeline:
        """The installed pipeline; UNAVAILABLE until the first models load."""
        pipeline = self._pipeline
        if pipeline is None:
            raise NotReadyError("models and index are still loading")
        return pipeline

    def user_context(
        self,
        pipeline: RecommendationPipeline,
        user_id: int,
        state: UserState,
        demographics: tuple[str, int, str, str],
    ) -> UserContext:
        schema = pipeline.models.schema
        history = schema.item_index(state.history_items)
        seen = schema.item_index(state.seen)
        if state.features is not None:
            profile = state.features
            gender, age, occupation, zip_code = (
                profile.get("gender", ""),
                int(profile.get("age", -1) or -1),
                profile.get("occupation", ""),
                profile.get("zip_code", ""),
            )
            has_profile = True
        else:
            gender, age, occupation, zip_code = demographics
            has_profile = bool(gender or age or occupation or zip_code)
            age = age if age > 0 else -1
        row = UserRow(
            user=int(schema.user_index([user_id])[0]),
            gender=int(encode_gender([gender])[0]),
            age=int(encode_age([age])[0]),
            occupation=int(schema.encode_occupation([occupation])[0]),
            zip=int(schema.encode_zip([zip_code])[0]),
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
        demographics = check_demographics(demo.gender, demo.age, demo.occupation, demo.zip_code)
        pipeline = self.require_pipeline()
        models = pipeline.models
        state = self.store.get_user_state(user_id, models.history_length)
        ctx = self.user_context(pipeline, user_id, state, demographics)
        exclude = models.schema.item_index(exclude_ids)
        features_done = time.perf_counter()
        result = pipeline.recommend(ctx, k, exclude[exclude > 0])
        serialise_start = time.perf_counter()
        item_ids = models.schema.item_id_of(result.items)
        response = pb.RecommendResponse(
            request_id=request_id,
            items=[
                pb.RecommendedItem(
                    item_id=str(i), title=models.titles[idx], score=s, source=channel, channel_score=cs
                )
                for i, idx, s, channel, cs in zip(
                    item_ids.tolist(),
                    result.items.tolist(),
                    result.scores.tolist(),
                    result.channels,
                    result.channel_scores.tolist(),
                )
            ],
            model_versions=pb.ModelVersions(**models.versions),
            new_user=state.features is None,
        )
        stage_ms = {"features": (features_done - started) * 1e3, **result.stage_ms}
        stage_ms["serialise"] = (time.perf_counter() - serialise_start) * 1e3
        response.stage_ms.update(stage_ms)
        if self.metrics is not None:
            self.metrics.observe_stages(stage_ms)
        return response

    def SimilarItems(
        self, request: pb.SimilarItemsRequest, context: grpc.ServicerContext
    ) -> pb.SimilarItemsResponse:
        item_id = parse_id("item_id", request.item_id)
        k = check_k(request.k, self.config.serving.max_similar_k)
        request_id = check_request_id(request.request_id) or uuid.uuid4().hex
        pipeline = self.require_pipeline()
        models = pipeline.models
        item = int(models.schema.item_index([item_id])[0])
        if item == 0:
            raise NotFoundError(f"item_id: no item {item_id} in the catalogue")
        items, scores = pipeline.similar_items(item, k)
        return pb.SimilarItemsResponse(
            request_id=request_id,
            items=[
                pb.SimilarItem(item_id=str(i), title=models.titles[idx], score=s)
                for i, idx, s in zip(
                    models.schema.item_id_of(items).tolist(), items.tolist(), scores.tolist()
                )
            ],
            model_versions=pb.ModelVersions(**models.versions),
        )

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
        pipeline = self.require_pipeline()
        if pipeline.models.schema.item_index([item_id])[0] == 0:
            raise InvalidArgumentError("item_id", f"no item {item_id} in the catalogue")
        length = self.store.record_event(
            user_id,
            HistoryEvent(item_id, int(request.event_type), timestamp),
            self.config.features.history_length,
        )
        return pb.RecordEventResponse(history_length=length)


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
    ):
        """``freeze_loaded_models``: keep loaded models out of the cyclic collector's reach (see
        ``freeze_long_lived_objects``); process-wide, so for a process that only serves."""
        self.config = config
        self.process_index = process_index
        self.freeze_loaded_models = freeze_loaded_models
        self.metrics = ServerMetrics()
        self.service = RecommenderService(config, store, self.metrics)
        self.health = health.HealthServicer()
        # Several processes share one port only when asked to; otherwise binding a taken port must fail.
        reuse_port = int(config.serving.processes > 1)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.serving.workers, thread_name_prefix="cascade-rpc"),
            interceptors=[ErrorInterceptor(self.metrics)],
            options=[("grpc.so_reuseport", reuse_port)],
        )
        pb_grpc.add_RecommenderServicer_to_server(self.service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.port: int | None = None
        self.process_port: int | None = None  # serving.process_ports + process_index, when configured
        self.metrics_port: int | None = None
        self._stopped = threading.Event()
        self._watcher: threading.Thread | None = None
        self._failed_versions: dict[str, str] | None = None

    def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def start(self) -> int:
        """Bind and start serving (health NOT_SERVING); returns the bound port."""
        address = f"{self.config.serving.host}:{self.config.serving.port}"
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"could not bind {address}")
        if self.config.serving.process_ports is not None:
            self.process_port = self._bind_own_port(self.config.serving.process_ports + self.process_index)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._server.start()
        logger.info("gRPC server listening on %s:%d", self.config.serving.host, self.port)
        if self.config.serving.metrics_port is not None:
            metrics_port = self.config.serving.metrics_port
            self.metrics_port = self.metrics.serve_http(
                metrics_port + self.process_index if metrics_port else 0, self.config.serving.host
            )
        return self.port

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
        if self._server.add_insecure_port(f"{host}:{port}") != port:
            raise RuntimeError(f"serving.process_ports: could not bind {host}:{port}")
        return port

    def load_models(self) -> ServingModels:
        models = ServingModels.load(ArtifactStore(self.config.artifacts_dir), self.config)
        self.service.install(models)
        if self.freeze_loaded_models:
            freeze_long_lived_objects()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        return models

    def reload_if_published(self) -> bool:
        """Swap in newly published versions, if any; True when a swap happened.

        The new models load beside the old ones, which keep answering until the swap, a single reference
        assignment, so no request fails or waits. A combination that fails to load (e.g. a new recall model
        whose index is not built yet) is logged once and retried only when the published versions change.
        """
        store = ArtifactStore(self.config.artifacts_dir)
        published = {kind: (ref.version if (ref := store.current(kind)) else "") for kind in SERVED_KINDS}
        pipeline = self.service.pipeline
        if pipeline is not None and published == pipeline.models.versions:
            return False
        if published == self._failed_versions:
            return False
        try:
            models = ServingModels.load(store, self.config)
            self.service.install(models)  # answers a warm-up request first: a set that cannot is refused
        except (ArtifactError, OSError, ValueError, KeyError, RuntimeError) as exc:
            self._failed_versions = published
            logger.warning("not reloading: published versions %s do not load together: %s", published, exc)
            return False
        if self.freeze_loaded_models:
            freeze_long_lived_objects(after_reload=True)
        self._failed_versions = None
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
                except Exception:  # the watcher must outlive any one bad publication
                    logger.exception("artifact watcher failed; retrying in %.1f s", interval)

        self._watcher = threading.Thread(target=run, name="cascade-artifact-watcher", daemon=True)
        self._watcher.start()

    def stop(self, grace_s: float = 5.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._server.stop(grace_s).wait()
        self.metrics.close()
        logger.info("gRPC server stopped")

    def wait(self) -> None:
        self._server.wait_for_termination()
