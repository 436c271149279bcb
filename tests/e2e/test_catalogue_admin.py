"""UpsertItem and DeleteItem: an added item is recommendable at once and a deleted one never served again, by
the server that acknowledged the change at once, by another within its reload interval, under concurrent
Recommend calls, after a restart and on a rebuilt index.

Its own Redis and artifacts: catalogue changes are global to a feature store, and the session's server must
not see them, nor the indexes these tests publish."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from cascade.serving.app import load_features
from cascade.serving.client import CascadeClient
from cascade.serving.feature_store.embedded import EmbeddedRedis
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from cascade.serving.server import CascadeServer
from cascade.training.index import rebuild_index
from tests.helpers import PSEUDONYMS, USER, item_ids


@pytest.fixture
def own_redis(config, built, tmp_path):
    """Its own Redis, and its own copy of the artifacts: these tests publish indexes, which the session's
    server must not see."""
    server = EmbeddedRedis(tmp_path / "redis.db")
    artifacts = shutil.copytree(config.artifacts_dir, tmp_path / "artifacts", symlinks=True)
    cfg = config.model_copy(
        update={
            "artifacts_dir": artifacts,
            "serving": config.serving.model_copy(update={"redis_url": server.url, "metrics_port": None}),
        }
    )
    load_features(cfg, RedisFeatureStore.from_url(server.url, pseudonyms=PSEUDONYMS))
    yield cfg, server
    server.stop()


def start(cfg) -> tuple[CascadeServer, CascadeClient]:
    srv = CascadeServer(cfg, RedisFeatureStore.from_url(cfg.serving.redis_url, pseudonyms=PSEUDONYMS))
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


def test_an_upserted_item_is_recommendable_at_once_and_kept(own_redis):
    from cascade.rerank.rules_file import parse_rules

    cfg, _ = own_redis
    first, a = start(cfg)
    second, b = start(cfg)
    failures: list[Exception] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            for user in range(1, 30):
                try:
                    a.recommend(user, k=10)
                    a.similar_items(50, k=5)
                except grpc.RpcError as exc:  # none may fail while the catalogue grows
                    failures.append(exc)

    with ThreadPoolExecutor(2) as pool:
        running = [pool.submit(hammer) for _ in range(2)]
        created = [
            a.upsert_item(90_000 + n, title=f"Brand New Comedy {n} (2026)", genres=["Comedy"], year=2026)
            for n in range(3)
        ]
        stop.set()
        for future in running:
            future.result()
    assert not failures and all(reply.created for reply in created)
    new_id = 90_000
    # in the live index, from its content: its nearest neighbours are served, and it is the nearest item to
    # its own vector in the recall channel
    assert len(a.similar_items(new_id, k=5).items) == 5
    pipeline = first.service.require_pipeline()
    schema = pipeline.models.schema
    index = int(schema.item_index(schema.parse_item_ids([str(new_id)]))[0])
    assert index >= pipeline.models.trained_items
    vector = pipeline.models.index.embeddings[index - 1]
    assert pipeline.two_tower(vector, np.zeros(0, dtype=np.int64), 3).items[0] == index
    # served with its id and title wherever the rules put it; a user who met it is still answered
    pipeline.use_rules(parse_rules(f'[[rules]]\nkind = "pin"\nitem = "{new_id}"\nposition = 1'))
    pinned = a.recommend(USER, k=10)
    assert pinned.items[0].item_id == str(new_id) and pinned.items[0].title == "Brand New Comedy 0 (2026)"
    a.record_event(USER, new_id, "view")
    assert str(new_id) not in {item.item_id for item in a.recommend(USER, k=10).items}  # seen now
    # replacing a trained item's content: its new title is served; upserting a deleted item restores it
    trained = item_ids(a.similar_items(50, k=1))[0]
    a.delete_item(trained)
    replaced = a.upsert_item(trained, title="Renamed (1999)", genres=["Drama"], year=1999)
    assert not replaced.created
    pipeline = first.service.require_pipeline()
    pipeline.use_rules(parse_rules(f'[[rules]]\nkind = "pin"\nitem = "{trained}"\nposition = 1'))
    assert a.recommend(2, k=5).items[0].title == "Renamed (1999)"
    # bad content is refused, naming the field
    for kwargs, field in (
        ({"item_id": "sku-1", "title": "x"}, "item_id"),
        ({"item_id": 90_010, "genres": ["Comedie"]}, "genres[0]"),
        ({"item_id": 90_010, "year": 12}, "year"),
        ({"item_id": 90_010, "title": "t" * 513}, "title"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            a.upsert_item(**kwargs)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(f"{field}:")
    # the other server follows; a restarted one and one on a rebuilt index keep the new items
    deadline = time.monotonic() + 5
    while True:
        try:
            if len(b.similar_items(new_id, k=5).items) == 5:
                break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND and time.monotonic() < deadline
        time.sleep(0.1)
    for srv, client in ((first, a), (second, b)):
        client.close()
        srv.stop(drain_s=0)
    restarted, c = start(cfg)
    try:
        assert len(c.similar_items(new_id, k=5).items) == 5
        rebuild_index(cfg)
        assert restarted.reload_if_published()
        assert len(c.similar_items(new_id + 2, k=5).items) == 5
        assert trained in item_ids(c.similar_items(50, k=1))  # restored, not deleted
    finally:
        c.close()
        restarted.stop(drain_s=0)
