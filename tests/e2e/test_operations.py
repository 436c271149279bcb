"""Running the service: hot reload under load, atomic publication, metrics, the load harness, several
processes, warm-up."""

from __future__ import annotations

import gc
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref

import grpc
import numpy as np
import pytest

from cascade.core.artifacts import ArtifactStore
from cascade.serving.api import recommender_pb2 as pb
from cascade.serving.api import recommender_pb2_grpc as pb_grpc
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from cascade.serving.server import CascadeServer, freeze_long_lived_objects
from cascade.training.index import rebuild_index
from cascade.training.rollback import rollback
from tests.helpers import PSEUDONYMS, USER, free_port, free_port_run

pytestmark = pytest.mark.e2e


def test_a_new_index_is_picked_up_under_load_without_a_failed_request(config, server, client):
    """Publish a new index, then roll it back, while 4 threads keep asking: no request fails and the
    served index version follows CURRENT both ways without a restart."""
    srv, _ = server
    srv.watch_artifacts()
    before = client.recommend(USER, k=5).model_versions.index
    failures: list[Exception] = []
    seen_versions: set[str] = set()
    stop = threading.Event()

    def hammer(offset: int) -> None:
        user = 1 + offset
        while not stop.is_set():
            try:
                reply = client.recommend(user, k=10)
                assert len(reply.items) == 10
                seen_versions.add(reply.model_versions.index)
            except Exception as exc:  # every failure is collected and reported
                failures.append(exc)
            user = user % 900 + 1

    def wait_for(version: str) -> None:
        deadline = time.monotonic() + 30
        while client.recommend(USER, k=5).model_versions.index != version:
            assert time.monotonic() < deadline, f"server never picked up index {version}"
            time.sleep(0.05)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        new = rebuild_index(config)  # not --if-stale: always a new version
        assert new.version != before
        wait_for(new.version)
        back = rollback(config, "index")
        assert back.version == before
        wait_for(before)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    assert {before, new.version} <= seen_versions


def test_killing_rebuild_index_midway_never_leaves_a_half_written_version(config, built):
    """SIGKILL `cascade rebuild-index` at several points: CURRENT always names a complete, verified
    version, and no partial version is visible."""
    store = ArtifactStore(config.artifacts_dir)
    env = dict(os.environ, CASCADE_CONFIG="")
    toml = config.artifacts_dir.parent / "kill.toml"
    toml.write_text(
        f'artifacts_dir = "{config.artifacts_dir}"\n[data]\ndata_dir = "{config.data.data_dir}"\n'
        "[recall]\nepochs = 4\nnum_candidates = 150\nearly_stopping_patience = 2\n"
    )
    for delay in (0.5, 1.5, 2.5, 3.5):
        proc = subprocess.Popen(
            [sys.executable, "-m", "cascade.cli", "-c", str(toml), "rebuild-index"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        current = store.require("index")
        current.verify()
        for version in store.versions("index"):
            store.get("index", version).verify()  # every visible version has a manifest and intact files
    assert store.require("index").manifest["parents"]["recall"] == built["recall"].version


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value from a Prometheus /metrics endpoint."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_stage_and_status_histograms_are_exported_for_prometheus(server, client):
    srv, _ = server
    before = _scrape(srv.metrics_port)
    reply = client.recommend(USER, k=5)
    with pytest.raises(grpc.RpcError):
        client.recommend("x" * 257, k=5)  # longer than an id may be
    after = _scrape(srv.metrics_port)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("cascade_requests_total", method="Recommend", code="OK") == 1
    assert delta("cascade_requests_total", method="Recommend", code="INVALID_ARGUMENT") == 1
    assert delta("cascade_request_seconds_count", method="Recommend") == 2
    for stage in ("features", "recall", "ranking_features", "ranking", "rerank", "serialise"):
        assert stage in reply.stage_ms
        assert delta("cascade_stage_seconds_count", stage=stage) == 1, stage
        assert delta("cascade_stage_seconds_sum", stage=stage) == pytest.approx(reply.stage_ms[stage] / 1e3)


def test_load_generator_and_in_process_stages_on_the_real_service(config, server, redis_server, dataset):
    from cascade.bench import serve_stages
    from cascade.bench.serve_load import LoadSettings, make_requests, run_rate

    _, port = server
    users = np.unique(dataset.interactions["user_id"].to_numpy())
    rng = np.random.default_rng(0)
    result = run_rate(
        f"127.0.0.1:{port}", make_requests(users, 40, 10, rng), 80.0, LoadSettings(channels=4), None, rng
    )
    assert result.ok == result.sent == 40 and not result.errors
    assert result.stage_ms["ranking"]["mean"] > 0 and result.stage_ms["recall"]["mean"] > 0
    assert result.latency_ms["p50"] >= result.server_total_ms["p50"]  # latency includes the server's time
    assert 40 < result.achieved_rps < 100

    store = RedisFeatureStore.from_url(redis_server.url, pseudonyms=PSEUDONYMS)
    try:
        report = serve_stages.run(config, store, users, serve_stages.StageSettings(requests=20, warmup=2))
    finally:
        store.close()
    assert set(report["stages"]) == {*serve_stages.STAGES, "wire_encode"}
    assert all(v["p50"] > 0 for v in report["stages"].values())
    assert report["total_ms"]["p50"] > report["stages"]["ranking"]["p50"]
    assert report["context"]["mean_candidates"] > config.recall.num_candidates  # plus co-occurrence


def test_several_server_processes_share_one_port(config, built, tmp_path):
    """`serving.processes = 2`: two processes bind the port with SO_REUSEPORT and the kernel spreads the
    generator's connections over them; with `process_ports`, each process also answers on its own port, so a
    client can spread requests, not connections (the harness's rotation, and gRPC's round_robin policy).
    Each process's own /metrics counts what it answered."""
    from cascade.bench.serve_load import LoadSettings, make_requests, run_rate, running_service

    port, metrics_base = free_port(), free_port_run(2)
    own_ports = free_port_run(2)
    while {own_ports, own_ports + 1} & {port, metrics_base, metrics_base + 1}:
        own_ports = free_port_run(2)
    multi = config.model_copy(
        update={
            "serving": config.serving.model_copy(
                update={
                    "processes": 2,
                    "port": port,
                    "metrics_port": metrics_base,
                    "process_ports": own_ports,
                    "reload_interval_s": 0,
                }
            )
        }
    )

    def answered_by_each() -> list[float]:
        key = ("cascade_requests_total", (("code", "OK"), ("method", "Recommend")))
        return [_scrape(metrics_base + i).get(key, 0) for i in range(2)]

    rng = np.random.default_rng(0)
    with running_service(multi, tmp_path / "server.log", start_timeout_s=180) as (target, pid):
        by_connection = run_rate(
            target, make_requests(np.arange(1, 900), 48, 5, rng), 100.0, LoadSettings(channels=16), pid, rng
        )
        after_connections = answered_by_each()
        by_request = run_rate(
            multi.serving.process_addresses(),
            make_requests(np.arange(1, 900), 40, 5, rng),
            100.0,
            LoadSettings(balance="requests"),
            pid,
            rng,
        )
        after_requests = answered_by_each()
        # the documented client configuration: one channel, gRPC's round_robin over the processes' ports
        addresses = ",".join(multi.serving.process_addresses())
        with grpc.insecure_channel(
            f"ipv4:{addresses}", options=[("grpc.lb_policy_name", "round_robin")]
        ) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = pb_grpc.RecommenderStub(channel)
            for user in range(1, 21):
                stub.Recommend(pb.RecommendRequest(user_id=str(user), k=5), timeout=10)
        after_round_robin = answered_by_each()
    assert by_connection.ok == 48 and not by_connection.errors
    assert sum(after_connections) == 48
    assert min(after_connections) > 0  # 16 connections all hashed to one process: odds 2 in 65536
    assert by_connection.server_cpu > 0
    assert by_request.ok == 40 and not by_request.errors
    assert [b - a for a, b in zip(after_connections, after_requests)] == [20, 20]
    round_robin = [b - a for a, b in zip(after_requests, after_round_robin)]
    assert sum(round_robin) == 20 and min(round_robin) > 0


def test_a_taken_process_port_is_refused_not_shared(config, redis_server):
    """The server's sockets carry SO_REUSEPORT; a process port already held elsewhere must fail loudly
    instead of silently splitting that port's connections with its holder."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        serving = config.serving.model_copy(update={"port": 0, "process_ports": taken, "metrics_port": None})
        store = RedisFeatureStore.from_url(
            redis_server.url, cache_size=10, cache_ttl_s=1, pseudonyms=PSEUDONYMS
        )
        server = CascadeServer(config.model_copy(update={"serving": serving}), store)
        try:
            with pytest.raises(RuntimeError, match=f"serving.process_ports: 127.0.0.1:{taken} is taken"):
                server.start()
        finally:
            server.stop(grace_s=0)
            store.close()


def test_installing_models_warms_them_up_before_any_request(config, built, redis_server):
    """Lazily built tables are built by install's warm-up request, not by the first caller."""
    from cascade.serving.models import ServingModels
    from cascade.serving.server import RecommenderService

    models = ServingModels.load(ArtifactStore(config.artifacts_dir), config)
    statistics = models.ranking_features.statistics
    assert "_recent_counts_at_end" not in vars(statistics)
    store = RedisFeatureStore.from_url(redis_server.url, cache_size=10, cache_ttl_s=1, pseudonyms=PSEUDONYMS)
    try:
        RecommenderService(config, store).install(models)
    finally:
        store.close()
    assert "_recent_counts_at_end" in vars(statistics)


def test_freezing_loaded_models_spares_them_from_collections_but_not_reloads():
    """What a serving process does after loading models: objects alive then leave the cyclic collector's
    reach; after a reload, the previous models' objects are collectable again (a cycle among them is
    freed, not leaked)."""

    class Node:
        pass

    old_model = Node()
    old_model.self_reference = old_model  # freed only by the cyclic collector
    gone = weakref.ref(old_model)
    try:
        assert freeze_long_lived_objects() > 0
        del old_model
        gc.collect()
        assert gone() is not None  # frozen: full collections skip it
        freeze_long_lived_objects(after_reload=True)
        assert gone() is None
    finally:
        gc.unfreeze()


def test_traces_have_a_span_per_rpc_with_a_child_per_stage(config, built, redis_server):
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from cascade.config import TracingConfig
    from cascade.serving.client import CascadeClient
    from cascade.serving.tracing import STAGE_ORDER, Tracing

    exporter = InMemorySpanExporter()
    tracing = Tracing.configure(TracingConfig(service_name="cascade-test"), SimpleSpanProcessor(exporter))
    cfg = config.model_copy(update={"serving": config.serving.model_copy(update={"metrics_port": None})})
    srv = CascadeServer(
        cfg, RedisFeatureStore.from_url(redis_server.url, pseudonyms=PSEUDONYMS), tracing=tracing
    )
    port = srv.start()
    try:
        srv.load_models()
        with CascadeClient(f"127.0.0.1:{port}") as client:
            reply = client.recommend(USER, k=5)
            client.similar_items(50, k=3)
    finally:
        srv.stop(drain_s=0)
    spans = exporter.get_finished_spans()
    rpc = {span.name: span for span in spans if span.parent is None}
    assert {"/cascade.v1.Recommender/Recommend", "/cascade.v1.Recommender/SimilarItems"} <= set(rpc)
    recommend = rpc["/cascade.v1.Recommender/Recommend"]
    stages = [span for span in spans if span.parent and span.parent.span_id == recommend.context.span_id]
    assert [span.name for span in stages if span.name in STAGE_ORDER] == [
        stage for stage in STAGE_ORDER if stage in reply.stage_ms
    ]
    redis_spans = [span for span in stages if span.attributes.get("db.system") == "redis"]
    assert redis_spans, "the feature-store read is a child span of the RPC"
    stages = [span for span in stages if span.name in STAGE_ORDER]
    assert all(a.end_time <= b.start_time for a, b in itertools.pairwise(stages))  # end to end, in order
    assert recommend.attributes["cascade.plan"] == "full"
    assert recommend.attributes["cascade.version.ranking"] == reply.model_versions.ranking
    assert recommend.resource.attributes["service.name"] == "cascade-test"


def test_tracing_is_off_without_an_endpoint():
    from cascade.config import TracingConfig
    from cascade.serving.tracing import Tracing

    off = Tracing.configure(TracingConfig())
    assert not off.enabled and off.server_interceptor() is None
    off.record_stages(0, {"recall": 1.0}, {})  # nothing to do, nothing raised
