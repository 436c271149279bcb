"""serving.redis_url: which kind of Redis it names, and a clear refusal of what it cannot be."""

from __future__ import annotations

import pytest

from cascade.serving.feature_store.connect import RedisAddress


def test_one_server_keeps_its_url_and_the_cluster_option_makes_it_a_cluster():
    single = RedisAddress.parse("redis://:secret@db.internal:6380/2")
    assert single.kind == "single" and single.url == "redis://:secret@db.internal:6380/2"
    assert RedisAddress.parse("unix:///run/redis.sock?db=1").url == "unix:///run/redis.sock?db=1"
    assert RedisAddress.parse("unix:///run/redis.sock?cluster=no&db=1").url == "unix:///run/redis.sock?db=1"
    assert RedisAddress.parse("redis://db:6379/0?cluster=false").url == "redis://db:6379/0"
    cluster = RedisAddress.parse("rediss://ops:pw@node-a:7000?cluster=true")
    assert (cluster.kind, cluster.nodes, cluster.username, cluster.password, cluster.tls) == (
        "cluster", (("node-a", 7000),), "ops", "pw", True,
    )  # fmt: skip


def test_a_cluster_lists_its_startup_nodes_and_sentinel_its_service_and_db():
    cluster = RedisAddress.parse("redis-cluster://:p%40ss@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002")
    assert cluster.kind == "cluster" and not cluster.tls
    assert cluster.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002))
    assert cluster.password == "p@ss" and cluster.username is None
    sentinel = RedisAddress.parse("rediss-sentinel://s1:26379,s2:26379/cascade-main/3")
    assert (sentinel.kind, sentinel.service, sentinel.db, sentinel.tls) == (
        "sentinel",
        "cascade-main",
        3,
        True,
    )
    assert sentinel.nodes == (("s1", 26379), ("s2", 26379))
    assert RedisAddress.parse("redis-sentinel://s1:26379/main").db == 0


@pytest.mark.parametrize(
    "url",
    [
        "redis-cluster://",
        "redis-cluster://node-a",
        "redis-cluster://node-a:port",
        "redis-sentinel://s1:26379",
        "redis-sentinel://s1:26379/main/db",
        "redis-sentinel://:hunter2@s1:26379/a/1/2",
    ],
)
def test_a_malformed_url_is_refused_naming_the_setting_and_never_the_password(url):
    with pytest.raises(ValueError, match=r"serving\.redis_url") as refused:
        RedisAddress.parse(url)
    assert "hunter2" not in str(refused.value)
