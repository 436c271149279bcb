"""The real pipeline trained on MovieLens-100K once per session and served over gRPC on a free port
against a real Redis."""

from __future__ import annotations

import grpc
import pytest

from cascade.config import AppConfig
from cascade.data.dataset import Dataset
from cascade.data.fetch import fetch
from cascade.serving.app import configure_serving_process, load_features
from cascade.serving.client import CascadeClient
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from cascade.serving.server import CascadeServer
from cascade.training.index import rebuild_index
from cascade.training.ranking import train_ranking
from cascade.training.recall import train_recall
from cascade.training.value import train_value
from tests.helpers import PSEUDONYM_KEY, PSEUDONYMS, USER


@pytest.fixture(scope="session")
def config(tmp_path_factory, redis_server) -> AppConfig:
    root = tmp_path_factory.mktemp("e2e")
    return AppConfig.model_validate(
        {
            "artifacts_dir": str(root / "artifacts"),
            "data": {"data_dir": str(root / "data")},
            "recall": {"epochs": 4, "num_candidates": 150, "early_stopping_patience": 2},
            "customers": {"value_period_days": 60},
            "privacy": {"pseudonym_key": PSEUDONYM_KEY},
            "ranking": {
                "training_candidates": 100,
                "model": {"type": "lightgbm", "rounds": 100, "cv_folds": 3},
            },
            "serving": {
                "port": 0,
                "redis_url": redis_server.url,
                "max_k": 50,
                "max_exclude_ids": 5,
                "reload_interval_s": 0.2,
                "metrics_port": 0,
                "drain_s": 0.0,
            },
        }
    )


@pytest.fixture(scope="session")
def built(config):
    fetch("movielens-100k", config.data.data_dir)
    refs = {
        "recall": train_recall(config, progress=False),
        "index": rebuild_index(config),
        "ranking": train_ranking(config, progress=False),
        "value": train_value(config),
    }
    return refs


@pytest.fixture(scope="session")
def dataset(config, built) -> Dataset:
    return Dataset.load(config.data.data_dir / "movielens-100k")


@pytest.fixture(scope="session")
def server(config, built, redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    store = RedisFeatureStore(client, pseudonyms=PSEUDONYMS, cache_size=1000, cache_ttl_s=30)
    configure_serving_process(config)
    srv = CascadeServer(config, store)
    port = srv.start()
    with CascadeClient(f"127.0.0.1:{port}") as probe:
        assert probe.health() == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as not_ready:
            probe.recommend(USER, k=5)
        assert not_ready.value.code() == grpc.StatusCode.UNAVAILABLE
    assert load_features(config, store) is True
    assert load_features(config, store) is False  # same data: nothing to do
    srv.load_models()
    yield srv, port
    srv.stop()
    client.flushdb()


@pytest.fixture
def client(server):
    _, port = server
    with CascadeClient(f"127.0.0.1:{port}") as c:
        yield c
