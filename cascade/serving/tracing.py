"""OpenTelemetry traces of the server: a span per RPC (opentelemetry-instrumentation-grpc's server
interceptor) with a child span per Recommend stage and one per feature-store command
(opentelemetry-instrumentation-redis, on the server's own Redis client only), exported over OTLP when
``serving.tracing.otlp_endpoint`` is set (the ``tracing`` extra). Off, nothing is imported, no
interceptor is added and no span is made.

Stage spans are recorded after the answer from the times the pipeline already measures, laid end to end
from the request's start, rather than opened around each stage: the hot path is the same traced or not.
"""

from __future__ import annotations

import logging
from typing import Any

from cascade.config import TracingConfig

logger = logging.getLogger(__name__)

# the order Recommend's stages run in, one after the other
STAGE_ORDER = ("features", "recall", "ranking_features", "ranking", "rerank", "serialise")


class Tracing:
    def __init__(self, provider: Any = None):
        """``provider``: an opentelemetry-sdk TracerProvider; None: tracing off."""
        self.provider = provider
        self._tracer = provider.get_tracer("cascade.serving") if provider is not None else None
        self._redis_clients: list[Any] = []

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @classmethod
    def configure(cls, config: TracingConfig, span_processor: Any = None) -> Tracing:
        """From the config: an OTLP exporter to ``otlp_endpoint`` in batches; or with ``span_processor``
        (tests: an in-memory exporter's) that one. Off when neither is given."""
        if config.otlp_endpoint is None and span_processor is None:
            return cls(None)
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
        except ImportError as exc:
            raise RuntimeError(
                "serving.tracing.otlp_endpoint is set but OpenTelemetry is not installed: "
                "pip install 'cascade-recsys[tracing]'"
            ) from exc
        provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBasedTraceIdRatio(config.sample_ratio),
        )
        if span_processor is None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            span_processor = BatchSpanProcessor(
                OTLPSpanExporter(endpoint=config.otlp_endpoint, insecure=True)
            )
            logger.info("exporting traces over OTLP to %s", config.otlp_endpoint)
        provider.add_span_processor(span_processor)
        return cls(provider)

    def server_interceptor(self) -> Any:
        """The gRPC server interceptor that opens each RPC's span (None when off)."""
        if not self.enabled:
            return None
        from opentelemetry.instrumentation.grpc import server_interceptor

        return server_interceptor(tracer_provider=self.provider)

    def instrument_redis(self, client: Any) -> None:
        """A span per command (and per pipeline) of this redis-py ``client``, children of the RPC's span;
        other clients in the process stay as they are. Nothing when tracing is off."""
        if not self.enabled:
            return
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        RedisInstrumentor.instrument_client(client=client, tracer_provider=self.provider)
        self._redis_clients.append(client)

    def record_stages(self, started_ns: int, stage_ms: dict[str, float], attributes: dict[str, Any]) -> None:
        """Child spans of the current RPC span, one per stage, from ``started_ns`` (time.time_ns()) on;
        ``attributes`` go on the RPC span (degraded reasons, plan, model versions)."""
        if self._tracer is None:
            return
        from opentelemetry import trace

        current = trace.get_current_span()
        for key, value in attributes.items():
            current.set_attribute(key, value)
        at = started_ns
        for stage in STAGE_ORDER:
            if stage not in stage_ms:
                continue
            end = at + int(stage_ms[stage] * 1e6)
            self._tracer.start_span(stage, start_time=at).end(end_time=end)
            at = end

    def shutdown(self) -> None:
        if self._redis_clients:
            from opentelemetry.instrumentation.redis import RedisInstrumentor

            for client in self._redis_clients:
                RedisInstrumentor.uninstrument_client(client)
            self._redis_clients.clear()
        if self.provider is not None:
            self.provider.shutdown()
