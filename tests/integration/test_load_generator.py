"""The open-loop load generator against a real gRPC server on a free port."""

from __future__ import annotations

import gc
import time
from concurrent import futures
from typing import ClassVar

import grpc
import numpy as np
import pytest

from cascade.bench.serve_load import LoadSettings, make_requests, run_rate, summarise
from cascade.serving.api import recommender_pb2 as pb
from cascade.serving.api import recommender_pb2_grpc as pb_grpc

SERVICE_S = 0.04


class OneAtATime(pb_grpc.RecommenderServicer):
    """Takes SERVICE_S per request on a single thread, so requests arriving faster queue up."""

    # opt-in: gc.get_freeze_count() walks the frozen objects, ~25 ms with the GIL held at this suite's heap
    frozen_during_requests: ClassVar[list[int] | None] = None

    def Recommend(self, request, context):
        if self.frozen_during_requests is not None:
            self.frozen_during_requests.append(gc.get_freeze_count())
        time.sleep(SERVICE_S)
        reply = pb.RecommendResponse(request_id=request.user_id)
        reply.stage_ms["ranking"] = SERVICE_S * 1e3
        return reply


@pytest.fixture
def slow_target():
    """HOST:PORT of a real gRPC server running OneAtATime on a single thread."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    pb_grpc.add_RecommenderServicer_to_server(OneAtATime(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_latency_counts_queueing_from_the_scheduled_send_time(slow_target):
    """10 requests offered at 100/s to a server that answers 25/s: an open-loop generator keeps sending
    on schedule, so request i waits for the i before it and its latency grows by ~30 ms per request. A
    closed-loop one would send the next only after an answer and report ~40 ms for every request."""
    rng = np.random.default_rng(0)
    requests = make_requests(np.arange(1, 50), 10, k=5, rng=rng)
    result = run_rate(slow_target, requests, 100.0, LoadSettings(channels=2, timeout_s=5.0), None, rng)
    assert result.ok == result.sent == 10 and not result.errors
    assert result.send_lag_ms["max"] < 15  # the generator kept its schedule while answers lagged
    assert result.stage_ms["ranking"]["mean"] == SERVICE_S * 1e3  # what the server says it spent
    # the last request queued behind nine others: ~10 x 40 ms - 9 x 10 ms after its scheduled time
    assert result.latency_ms["p99.9"] > 250
    assert result.latency_ms["p50"] > 150
    assert result.outside_server_ms > 100  # the queueing is attributed to outside the handler
    assert result.achieved_rps < 30


def test_the_generator_freezes_its_heap_while_it_sends_and_restores_it_after(slow_target):
    """The generator (this process: the server thread shares it) freezes the objects alive before a run
    so its collector's full passes cannot stall the schedule, and leaves the collector as it found it."""
    rng = np.random.default_rng(2)
    requests = make_requests(np.arange(1, 50), 4, k=5, rng=rng)
    callbacks_before = list(gc.callbacks)
    OneAtATime.frozen_during_requests = []
    try:
        result = run_rate(slow_target, requests, 50.0, LoadSettings(channels=1, timeout_s=5.0), None, rng)
        assert min(OneAtATime.frozen_during_requests) > 10_000  # at least the test process's modules
    finally:
        OneAtATime.frozen_during_requests = None
    assert result.ok == 4
    assert gc.get_freeze_count() == 0
    assert gc.callbacks == callbacks_before
    assert 0 <= result.generator_gc_max_ms < 1e3


def test_a_server_past_its_deadline_is_counted_by_status_code(slow_target):
    rng = np.random.default_rng(1)
    requests = make_requests(np.arange(1, 5), 12, 5, rng)
    result = run_rate(slow_target, requests, 200.0, LoadSettings(channels=1, timeout_s=0.1), None, rng)
    assert result.sent == 12
    assert result.errors.get("DEADLINE_EXCEEDED", 0) >= 6
    assert result.ok + sum(result.errors.values()) == 12
    assert result.latency_ms["p99"] >= 100  # failed requests stay in the percentiles


def test_sustained_rate_stops_at_the_first_rate_that_misses_the_slo():
    def rate(offered: float, p99: float, errors: dict | None = None) -> dict:
        return {"offered_rps": offered, "latency_ms": {"p99": p99}, "errors": errors or {}}

    rates = [rate(50, 9), rate(100, 12), rate(150, 68), rate(200, 30), rate(250, 40, {"UNAVAILABLE": 1})]
    summary = summarise(rates, slo_p99_ms=50)
    assert summary["p99_ms_at_100_rps"] == 12
    assert summary["max_rps_with_p99_within_slo"] == 100  # 200 passing after 150 failed is not capacity
    assert summary["rates_within_slo"] == [50, 100, 200]
    assert summarise([rate(50, 80)], 50)["max_rps_with_p99_within_slo"] is None
