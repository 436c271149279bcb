"""The real service when things go wrong: Redis killed and slowed, short deadlines, overload, garbage on the
wire, corrupt and mismatched artifacts; and what operators rely on: reflection, rich error details,
request ids."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status

from cascade.bench.faults import republish, truncate
from cascade.bench.redis_process import RedisProcess
from cascade.serving.app import load_features
from cascade.serving.client import CascadeClient
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from cascade.serving.server import FEATURE_STORE_HEALTH, SERVICE_NAME, CascadeServer
from tests.helpers import PSEUDONYMS, USER

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def serving(config, redis_url: str, **serving_overrides):
    """A server of the session's models against the Redis at ``redis_url`` (features loaded)."""
    overrides = {"port": 0, "redis_url": redis_url, "metrics_port": None, "drain_s": 0.0, **serving_overrides}
    cfg = config.model_copy(update={"serving": config.serving.model_copy(update=overrides)})
    loader = RedisFeatureStore.from_url(
        redis_url, timeout_s=60, pseudonyms=PSEUDONYMS
    )  # a bulk load's pipelines take a while
    load_features(cfg, loader)
    loader.close()
    store = RedisFeatureStore.from_url(redis_url, cache_size=0, timeout_s=0.25, pseudonyms=PSEUDONYMS)
    srv = CascadeServer(cfg, store)
    port = srv.start()
    try:
        srv.load_models()
        with CascadeClient(f"127.0.0.1:{port}", timeout_s=10) as client:
            yield srv, client
    finally:
        srv.stop(drain_s=0)


@pytest.fixture
def own_redis(tmp_path):
    process = RedisProcess(tmp_path / "redis").start()
    yield process
    process.stop()


def _wait_for(condition, timeout_s: float = 5.0, what: str = "condition") -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what} not met within {timeout_s} s"
        time.sleep(0.02)
    return time.monotonic() - started


def test_redis_down_degrades_answers_refuses_writes_retryably_and_recovers_without_restart(
    config, built, own_redis
):
    with serving(config, own_redis.url) as (srv, client):
        normal = client.recommend(USER, k=10)
        assert not normal.degraded and not normal.new_user
        client.record_event(USER, 50, "click", event_id="before-outage")

        own_redis.kill()
        cached = client.recommend(USER, k=10)  # read a moment ago: answered from the cache, personalised
        assert cached.degraded and list(cached.degraded_reasons) == ["stale_features"]
        assert len(cached.items) == 10
        unknown = client.recommend(7, k=10, gender="F", age=25)  # not cached: request demographics
        assert unknown.degraded and list(unknown.degraded_reasons) == ["feature_store_unavailable"]
        assert len(unknown.items) == 10 and not unknown.new_user
        with pytest.raises(grpc.RpcError) as refused:
            client.record_event(USER, 51, "click", event_id="during-outage")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        trailers = dict(refused.value.trailing_metadata())
        assert int(trailers["grpc-retry-pushback-ms"]) > 0
        status = rpc_status.from_call(refused.value)
        retry = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(retry) and retry.retry_delay.ToMilliseconds() > 0
        assert client.similar_items(50, k=5).items  # never touches Redis
        assert client.health() == "SERVING"  # alive and answering ...
        _wait_for(lambda: client.health(FEATURE_STORE_HEALTH) == "NOT_SERVING", what="readiness NOT_SERVING")

        own_redis.start()
        took = _wait_for(lambda: not client.recommend(USER, k=10).degraded, what="non-degraded answers")
        assert took < 2.0
        assert client.health(FEATURE_STORE_HEALTH) == "SERVING"
        again = client.record_event(USER, 50, "click", event_id="before-outage")
        assert again.duplicate  # acknowledged before the kill: still there, and recorded once
        assert client.record_event(USER, 51, "click", event_id="during-outage").duplicate is False
        degraded = srv.metrics.degraded
        assert degraded.labels("stale_features")._value.get() >= 1
        assert degraded.labels("feature_store_unavailable")._value.get() >= 1


def test_a_slow_redis_delays_no_answer_past_its_deadline(config, built, own_redis):
    with serving(config, own_redis.url) as (_srv, client):
        client.recommend(USER, k=10)
        own_redis.pause(3.0)
        latencies = []
        for _ in range(10):
            started = time.perf_counter()
            reply = client.recommend(USER, k=10, timeout_s=0.2)
            latencies.append(time.perf_counter() - started)
            assert reply.degraded and "stale_features" in reply.degraded_reasons
        assert max(latencies) < 0.2
        started = time.perf_counter()
        assert client.similar_items(50, k=5).items
        assert time.perf_counter() - started < 0.2


def test_short_deadlines_shrink_the_work_and_expired_ones_are_dropped(server, client):
    srv, _ = server
    pipeline = srv.service.require_pipeline()
    saved = pipeline.costs.recall_ms, pipeline.costs.rank_ms
    try:
        # the cost model as if ranking took 100 ms: a 60 ms budget affords recall only
        pipeline.costs.recall_ms, pipeline.costs.rank_ms = 5.0, 100.0
        shrunk = client.recommend(USER, k=10, budget_ms=60)
        assert shrunk.degraded and list(shrunk.degraded_reasons) == ["deadline_shrunk"]
        assert len(shrunk.items) == 10 and shrunk.stage_ms["ranking_features"] == 0  # no ranker ran
        assert {item.source for item in shrunk.items} == {"two_tower"}  # in their recall order
        assert all(item.score == item.channel_score for item in shrunk.items)
        full = client.recommend(USER, k=10)  # no deadline: the full pipeline
        assert not full.degraded and full.stage_ms["ranking"] > 0
    finally:
        pipeline.costs.recall_ms, pipeline.costs.rank_ms = saved
    dropped_before = srv.metrics.dropped_late.labels("Recommend")._value.get()
    with pytest.raises(grpc.RpcError) as late:
        client.recommend(USER, k=10, budget_ms=1)  # less than the margin left once it arrives
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert srv.metrics.dropped_late.labels("Recommend")._value.get() == dropped_before + 1


def test_overload_is_shed_at_once_and_other_methods_keep_answering(config, built, own_redis):
    with serving(config, own_redis.url, workers=1, queue_size=1) as (srv, client):
        client.recommend(USER, k=10)
        own_redis.pause(1.5)  # every Recommend of a user not cached waits for its read

        pushback = []

        def one(user: int) -> tuple[str, float]:
            started = time.perf_counter()
            try:
                client.recommend(user, k=5, timeout_s=5)
                code = "OK"
            except grpc.RpcError as err:
                code = err.code().name
                pushback.extend(v for k, v in err.trailing_metadata() or () if k == "grpc-retry-pushback-ms")
            return code, time.perf_counter() - started

        with ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(one, range(100, 112)))
            similar_started = time.perf_counter()
            assert client.similar_items(50, k=5).items
            similar_s = time.perf_counter() - similar_started
        shed = [took for code, took in outcomes if code == "RESOURCE_EXHAUSTED"]
        assert len(shed) >= 8 and {code for code, _ in outcomes} <= {"OK", "RESOURCE_EXHAUSTED"}
        assert max(shed) < 0.1  # refused at once, not after waiting
        assert len(pushback) == len(shed)  # each refusal tells the caller's retry policy when to retry
        assert similar_s < 0.5
        assert srv.metrics.shed.labels("Recommend")._value.get() == len(shed)


def test_garbage_bytes_are_invalid_argument_and_reflection_lists_the_services(server):
    _srv, port = server
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        raw = channel.unary_unary(f"/{SERVICE_NAME}/Recommend")  # bytes in, bytes out
        for garbage in (b"\xff\xff\xff\xff", b"\x0a\xff\x01", bytes(range(256))):
            with pytest.raises(grpc.RpcError) as err:
                raw(garbage, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid Recommend request" in err.value.details()
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= services


def test_invalid_argument_carries_a_bad_request_naming_the_field_and_request_ids_echo(client):
    with pytest.raises(grpc.RpcError) as err:
        client.recommend(USER, k=0)
    status = rpc_status.from_call(err.value)
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "k"
    assert client.recommend(USER, k=3, request_id="trace-7").request_id == "trace-7"
    stub_call = client._stub.Recommend.with_call(
        client_request(USER), metadata=[("x-request-id", "from-metadata")], timeout=5
    )
    assert stub_call[0].request_id == "from-metadata"


def client_request(user: int):
    from cascade.serving.api import recommender_pb2 as pb

    return pb.RecommendRequest(user_id=str(user), k=3)


def test_events_are_idempotent_and_a_rating_needs_its_value(client, redis_server):
    first = client.record_event(USER, 60, "view", event_id="idem-1")
    second = client.record_event(USER, 60, "view", event_id="idem-1")
    assert not first.duplicate and second.duplicate and second.history_length == first.history_length
    with pytest.raises(grpc.RpcError) as err:
        client.record_event(USER, 61, "rate")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "rating" in err.value.details()
    assert not client.record_event(USER, 61, "rate", rating=4).duplicate
    store = RedisFeatureStore.from_url(redis_server.url, pseudonyms=PSEUDONYMS)
    assert store.ratings(USER)[61] == 4.0


def test_corrupt_or_mismatched_artifacts_are_refused_and_the_old_models_keep_serving(config, built, server):
    """Each kind of bad publication, each re-sealed (valid sha256s): a truncated LightGBM model (its parser
    aborts the process), a truncated recall array file and index, and a ranker whose recall is another:
    refused once each, never retried, and the old versions answer throughout."""
    srv, port = server
    srv.watch_artifacts()  # every reload_interval_s (a no-op when already watching)
    store = config.artifact_store()
    originals = dict(srv.service.require_pipeline().models.versions)
    serving_versions = originals
    ranking_files = set(store.current("ranking").manifest["files"])
    model_file = next(name for name in ranking_files if name.endswith(".txt"))
    recall_files = store.current("recall").manifest["files"]
    array_file = next(name for name in recall_files if name.endswith((".npz", ".safetensors")))
    stop = threading.Event()
    failures: list[str] = []

    def load() -> None:
        with CascadeClient(f"127.0.0.1:{port}", timeout_s=10) as c:
            while not stop.is_set():
                try:
                    c.recommend(USER, k=5)
                except grpc.RpcError as err:
                    failures.append(err.code().name)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        refused_before = srv.metrics.reload_failures._value.get()
        # a recall on its own, even a sound one: no ranker was trained on it yet, so it is not served
        new_recall = republish(store, "recall", serving_versions["recall"])
        time.sleep(1.0)
        assert srv.service.require_pipeline().models.versions == serving_versions
        # sound copies of the index and ranker are served (so the copies below fail for their damage alone)
        sound = {
            "recall": serving_versions["recall"],
            "index": republish(store, "index", serving_versions["index"]).version,
            "ranking": republish(store, "ranking", serving_versions["ranking"]).version,
        }
        _wait_for(lambda: srv.service.require_pipeline().models.versions == sound, 60, "the sound copies")
        serving_versions = sound
        # a ranker trained on that recall whose recall file is damaged, with an index built from it
        bad_recall = republish(store, "recall", serving_versions["recall"], damage=truncate(array_file))
        republish(store, "index", serving_versions["index"], parents={"recall": bad_recall.version})
        republish(store, "ranking", serving_versions["ranking"], parents={"recall": bad_recall.version})
        _wait_for(lambda: srv.metrics.reload_failures._value.get() == refused_before + 1, 60, "refusal 1")
        # a truncated LightGBM model, on the sound new recall and an index built from it
        republish(store, "index", serving_versions["index"], parents={"recall": new_recall.version})
        republish(
            store,
            "ranking",
            serving_versions["ranking"],
            parents={"recall": new_recall.version},
            damage=truncate(model_file),
        )
        _wait_for(lambda: srv.metrics.reload_failures._value.get() == refused_before + 2, 60, "refusal 2")
        time.sleep(1.0)  # several watcher rounds: neither is tried again
        assert srv.metrics.reload_failures._value.get() == refused_before + 2
        assert srv.service.require_pipeline().models.versions == serving_versions
    finally:
        stop.set()
        loader.join()
        for kind in ("recall", "index", "ranking"):  # the session's other tests serve the originals
            store.set_current(kind, originals[kind])
    assert failures == []
