"""The service on a real Redis Cluster (3 masters, 3 replicas): features loaded across the shards, every
call served, and a master killed under load: requests degrade, the replica takes over, no acknowledged
event is lost."""

from __future__ import annotations

import threading
import time
from collections import Counter

import grpc
import pytest

from cascade.bench.redis_cluster import RedisClusterProcesses
from cascade.serving.feature_store.connect import redis_client
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from tests.e2e.test_resilience import serving
from tests.helpers import PSEUDONYMS, USER

pytestmark = pytest.mark.e2e


def _item_ids(response) -> list[str]:
    return [item.item_id for item in response.items]


def test_the_service_runs_on_a_redis_cluster(config, built, redis_cluster):
    cluster = redis_client(redis_cluster.url, timeout_s=5.0)
    cluster.flushdb()
    with serving(config, redis_cluster.url) as (srv, client):
        # the load spread users over every master
        masters = [
            node for node in redis_cluster.nodes
            if redis_cluster.client(node).info("replication")["role"] == "master"
        ]  # fmt: skip
        sizes = [redis_cluster.client(node).dbsize() for node in masters]
        assert len(sizes) == 3 and min(sizes) > 100, sizes
        first = client.recommend(USER, k=10)
        assert not first.degraded and not first.new_user and len(first.items) == 10
        top = _item_ids(first)[0]
        assert not client.record_event(USER, top, "click", event_id="cluster-1").duplicate
        assert client.record_event(USER, top, "click", event_id="cluster-1").duplicate
        assert top not in _item_ids(client.recommend(USER, k=10))  # seen: the event is read back at once
        profile = client.customer_profile(USER)
        assert profile.recent_items[0].item_id == top
        assert client.delete_item(_item_ids(first)[1]).deleted
        srv.service.refresh_catalogue()
        assert _item_ids(first)[1] not in _item_ids(client.recommend(USER, k=10))
        assert client.similar_items(50, k=5).items
    cluster.close()


def test_a_killed_master_degrades_requests_then_its_replica_takes_over_and_no_event_is_lost(
    config, built, tmp_path
):
    with RedisClusterProcesses(tmp_path / "cluster", node_timeout_ms=1000) as cluster:
        with serving(config, cluster.url, reload_interval_s=0.2) as (_, client):
            # users whose keys live on the master about to be killed, and others
            victim = cluster.master_of(f"{{u:{PSEUDONYMS.of(USER)}}}".encode())
            on_victim = [
                u for u in range(1, 200) if cluster.master_of(f"{{u:{PSEUDONYMS.of(u)}}}".encode()) is victim
            ]
            elsewhere = [u for u in range(1, 200) if u not in on_victim][:10]  # fmt: skip
            users = on_victim[:10] + elsewhere
            acknowledged: list[tuple[int, int, str]] = []
            codes: Counter[str] = Counter()
            degraded = Counter()
            stop = threading.Event()
            killed = threading.Event()
            others: Counter[bool] = Counter()  # True: acknowledged for another master's user after the kill
            refused_others: Counter[bool] = Counter()

            def events() -> None:
                n = 0
                while not stop.is_set():
                    user, item, event_id = users[n % len(users)], 1 + n % 1500, f"fo-{n}"
                    try:
                        client.record_event(user, item, "view", event_id=event_id)
                        acknowledged.append((user, item, event_id))
                        codes["RecordEvent OK"] += 1
                        others[user not in on_victim and killed.is_set()] += 1
                    except grpc.RpcError as exc:
                        codes[f"RecordEvent {exc.code().name}"] += 1
                        refused_others[user not in on_victim and killed.is_set()] += 1
                        time.sleep(0.01)
                    n += 1

            def recommends() -> None:
                n = 0
                while not stop.is_set():
                    try:
                        answer = client.recommend(users[n % len(users)], k=10)
                        codes["Recommend OK"] += 1
                        degraded.update(answer.degraded_reasons)
                    except grpc.RpcError as exc:
                        codes[f"Recommend {exc.code().name}"] += 1
                    n += 1

            threads = [threading.Thread(target=events), threading.Thread(target=recommends)]
            for thread in threads:
                thread.start()
            try:
                time.sleep(1.0)
                victim.kill()
                killed.set()
                promoted_after = cluster.wait_for_new_master(f"{{u:{PSEUDONYMS.of(USER)}}}".encode(), victim)
                # after the promotion, a user of the killed master is served fresh and their events stored
                deadline = time.monotonic() + 10
                while True:
                    try:
                        fresh = not client.recommend(on_victim[0], k=10).degraded
                        stored = fresh and client.record_event(on_victim[0], 7, "view", event_id="after")
                        if stored:
                            break
                    except grpc.RpcError:
                        pass
                    assert time.monotonic() < deadline, f"not recovered after the promotion: {codes}"
                    time.sleep(0.05)
                time.sleep(0.5)
            finally:
                stop.set()
                for thread in threads:
                    thread.join()
        assert set(codes) <= {"RecordEvent OK", "RecordEvent UNAVAILABLE", "Recommend OK"}, codes
        assert codes["RecordEvent UNAVAILABLE"] > 0 and degraded, (codes, degraded)
        assert promoted_after < 10
        # each master has its own breaker, and the others keep serving their slots: the other masters'
        # users are stored throughout
        assert others[True] > 20 and refused_others[True] <= 0.05 * others[True], (others, refused_others)
        # every acknowledged event is on the cluster now: its id key is written by the same script, in the
        # same step, as its history entry
        store = RedisFeatureStore.from_url(cluster.url, timeout_s=5.0, pseudonyms=PSEUDONYMS)
        try:
            keyspace = store.keyspace
            pipe = store.client.pipeline(transaction=False)
            for user, _, event_id in acknowledged:
                pipe.exists(keyspace.event_key(store.tag(user), event_id))
            held = pipe.execute()
            missing = [event for event, found in zip(acknowledged, held) if not found]
            assert len(acknowledged) > 50 and not missing, missing[:10]
        finally:
            store.close()
