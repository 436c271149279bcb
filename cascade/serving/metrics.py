"""Prometheus metrics of one server process: request latency and status codes per method (health checks
are not traffic and are not counted), the time each Recommend stage took, degraded answers and shed
requests, the feature store's breaker and cache, model versions and reload failures, and the process's own
CPU, memory and file descriptors. Each server gets its own registry, so several servers in one process
(tests) never clash."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)

logger = logging.getLogger(__name__)

# Milliseconds matter at the low end (a stage takes 0.05-5 ms) and queueing shows at the high end.
LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.2, 0.5, 1.0, 2.5,
)  # fmt: skip


class ServerMetrics:
    def __init__(self) -> None:
        self._http = None
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cascade_requests",
            "RPCs answered, by method and gRPC status code.",
            ("method", "code"),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "cascade_request_seconds",
            "Server-side time of an RPC, from the handler's start to its return, by method.",
            ("method",),
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "cascade_stage_seconds",
            "Time of one Recommend stage (features, recall, ranking_features, ranking, rerank, serialise).",
            ("stage",),
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

        self.degraded = Counter(
            "cascade_degraded_answers",
            "Recommend answers worse than the full pipeline's, by reason (feature_store_unavailable, "
            "stale_features, deadline_shrunk).",
            ("reason",),
            registry=self.registry,
        )
        self.shed = Counter(
            "cascade_shed_requests",
            "Requests refused with RESOURCE_EXHAUSTED because their method's workers and queue were full.",
            ("method",),
            registry=self.registry,
        )
        self.auth_refusals = Counter(
            "cascade_auth_refusals",
            "Calls refused before any work: unauthenticated (no key in force) or forbidden (no scope).",
            ("method", "reason"),
            registry=self.registry,
        )
        self.dropped_late = Counter(
            "cascade_deadline_dropped_requests",
            "Requests dropped because their deadline passed before the answer was ready.",
            ("method",),
            registry=self.registry,
        )
        self.breaker_state = Gauge(
            "cascade_feature_store_breaker_state",
            "The feature store's circuit breaker: 0 closed, 1 half-open, 2 open.",
            registry=self.registry,
        )
        self.feature_lookups = Counter(
            "cascade_feature_store_lookups",
            "User feature reads by outcome: fresh (from Redis), stale (from the in-process cache while Redis "
            "could not answer), miss (neither).",
            ("outcome",),
            registry=self.registry,
        )
        self.guard_events = Counter(
            "cascade_guard_events",
            "RecordEvent calls the guard checked, by outcome: recorded, quarantined (a flagged user's, "
            "stored apart), blocked (a blocked user's, refused), limited_user, limited_client, "
            "limited_item (refused past a rate limit), unlimited (the client's and item's counters could not "
            "be counted: not limited by them).",
            ("outcome",),
            registry=self.registry,
        )
        self.guard_flags = Counter(
            "cascade_guard_flags",
            "Users flagged or blocked, by who decided: detector (the live score) or operator.",
            ("by",),
            registry=self.registry,
        )
        self.model_versions = Info(
            "cascade_model_versions",
            "The recall, index and ranking versions serving.",
            registry=self.registry,
        )
        self.reload_failures = Counter(
            "cascade_reload_failures",
            "Published model sets refused (they failed to validate or load); each set is tried once.",
            registry=self.registry,
        )
        self.rules_reload_failures = Counter(
            "cascade_rules_reload_failures",
            "Rules file versions refused (unreadable, invalid, or naming what the catalogue lacks); the "
            "rules before them kept serving.",
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.request_seconds.labels(method).observe(seconds)

    def observe_stages(self, stage_ms: dict[str, float]) -> None:
        for stage, ms in stage_ms.items():
            self.stage_seconds.labels(stage).observe(ms / 1e3)

    def serve_http(self, port: int, host: str, serving: Callable[[], bool] = lambda: True) -> int:
        """Expose /metrics on ``host:port`` (0: a free port) in a daemon thread, and /ready: 200 while
        ``serving()`` (the gRPC health's overall status is SERVING), else 503, for balancers that check
        over HTTP (HAProxy's ``option httpchk``; ``deploy/haproxy.cfg``). Returns the port."""
        metrics = make_wsgi_app(self.registry)

        def app(environ, start_response):
            if environ.get("PATH_INFO") == "/ready":
                ready = serving()
                start_response(
                    "200 OK" if ready else "503 Service Unavailable", [("Content-Type", "text/plain")]
                )
                return [b"SERVING\n" if ready else b"NOT_SERVING\n"]
            return metrics(environ, start_response)

        self._http = make_server(host, port, app, _ThreadingWSGIServer, handler_class=_QuietHandler)
        threading.Thread(target=self._http.serve_forever, name="cascade-metrics-http", daemon=True).start()
        bound = self._http.server_address[1]
        logger.info("Prometheus metrics on http://%s:%d/metrics, readiness on /ready", host, bound)
        return bound

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in flight never holds the process at exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:
        """Health checks and scrapes every second are not worth a log line each."""
