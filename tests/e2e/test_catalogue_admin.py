"""DeleteItem: a deleted item is never served again, by the server that acknowledged it at once, by another
within its reload interval, under concurrent Recommend calls, after a restart and on a rebuilt index.

Its own Redis: deletions are global to a feature store, and the session's server must not see these."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from cascade.serving.app import load_features
from cascade.serving.client import CascadeClient
from cascade.serving.feature_store.embedded import EmbeddedRedis
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from cascade.serving.server import CascadeServer
from cascade.training.index import rebuild_index
from tests.helpers import USER, item_ids


@pytest.fixture
def own_redis(config, built, tmp_path):
    server = EmbeddedRedis(tmp_path / "redis.db")
    cfg = config.model_copy(
        update={"serving": config.serving.model_copy(update={"redis_url": server.url, "metrics_port": None})}
    )
    load_features(cfg, RedisFeatureStore.from_url(server.url))
    yield cfg, server
    server.stop()


def start(cfg) -> tuple[CascadeServer, CascadeClient]:
    srv = CascadeServer(cfg, RedisFeatureStore.from_url(cfg.serving.redis_url))
    port = srv.start()
    srv.load_models()
    srv.watch_artifacts()
    return srv, CascadeClient(f"127.0.0.1:{port}")


def test_a_deleted_item_is_never_served_again(own_redis):
    cfg, _ = own_redis
    first, a = start(cfg)
    second, b = start(cfg)
    users = list(range(1, 41))
    doomed = sorted({item_ids(a.recommend(user, k=3))[0] for user in users[:6]})
    neighbour = item_ids(a.similar_items(50, k=3))[0]
    doomed = sorted({*doomed, neighbour})
    failures: list[Exception] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            for user in users:
                try:
                    a.recommend(user, k=10)
                except grpc.RpcError as exc:  # none may fail while the catalogue changes
                    failures.append(exc)

    with ThreadPoolExecutor(3) as pool:
        running = [pool.submit(hammer) for _ in range(3)]
        time.sleep(0.3)
        for item in doomed:
            reply = a.delete_item(item)
            assert reply.deleted and reply.catalogue_version > 0
            # acknowledged: this server never serves it from now on
            assert item not in item_ids(a.recommend(USER, k=50))
        stop.set()
        for future in running:
            future.result()
    assert not failures
    again = a.delete_item(doomed[0])
    assert not again.deleted and again.catalogue_version == reply.catalogue_version
    for user in users:
        assert not set(doomed) & set(item_ids(a.recommend(user, k=20)))
    assert neighbour not in item_ids(a.similar_items(50, k=10))
    explained = a.recommend(users[0], k=10, explain=True)
    assert explained.removed_by_rule["deleted"] >= 1
    # the other server follows within its reload interval
    deadline = time.monotonic() + 5
    while set(doomed) & {i for u in users[:6] for i in item_ids(b.recommend(u, k=3))}:
        assert time.monotonic() < deadline, "the second server still serves a deleted item"
        time.sleep(0.1)
    with pytest.raises(grpc.RpcError) as err:
        a.delete_item("99999999")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # a restarted server, and one on a rebuilt index, keep the deletions from their first answer
    for srv, client in ((first, a), (second, b)):
        client.close()
        srv.stop(drain_s=0)
    restarted, c = start(cfg)
    try:
        assert not set(doomed) & {i for u in users[:6] for i in item_ids(c.recommend(u, k=3))}
        rebuild_index(cfg)
        assert restarted.reload_if_published()
        assert not set(doomed) & {i for u in users[:6] for i in item_ids(c.recommend(u, k=3))}
        assert neighbour not in item_ids(c.similar_items(50, k=10))
    finally:
        c.close()
        restarted.stop(drain_s=0)
