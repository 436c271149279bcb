"""Running the service: the online store (embedded or external Redis), its bulk load, and the server."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator

import torch

from cascade.artifacts import fingerprint
from cascade.config import AppConfig
from cascade.data.dataset import Dataset
from services.feature_store import keys
from services.feature_store.embedded import EmbeddedRedis
from services.feature_store.redis_store import RedisFeatureStore
from services.server import CascadeServer
from services.workflows import dataset_path

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def open_feature_store(config: AppConfig) -> Iterator[RedisFeatureStore]:
    """REDIS_URL / serving.redis_url if set, else an embedded redis-server that stops on exit."""
    embedded = None
    url = config.serving.redis_url
    if not url:
        embedded = EmbeddedRedis(config.serving.embedded_redis_path)
        url = embedded.url
    store = RedisFeatureStore.from_url(url, config.serving.user_cache_size, config.serving.user_cache_ttl_s)
    try:
        store.ping()
        yield store
    finally:
        store.close()
        if embedded is not None:
            embedded.stop()


def ensure_features_loaded(config: AppConfig, store: RedisFeatureStore) -> bool:
    """Bulk-load user profiles and full histories of the configured dataset unless that exact load is
    already in Redis (events recorded since are then kept). Returns whether a load happened."""
    path = dataset_path(config)
    marker = fingerprint(
        "feature-load", keys.KEY_SCHEMA_VERSION, Dataset.fingerprint_of(path), config.features.history_length
    )
    if store.loaded_marker() == marker:
        logger.info("Redis already holds this dataset's features (marker %s)", marker)
        return False
    dataset = Dataset.load(path)
    store.bulk_load(dataset.users, dataset.interactions, config.features.history_length, marker)
    return True


def configure_compute_threads(config: AppConfig) -> None:
    """Requests run in parallel threads, so each request's torch and FAISS work stays single-threaded."""
    import faiss

    torch.set_num_threads(config.serving.compute_threads)
    faiss.omp_set_num_threads(config.serving.compute_threads)


def serve_forever(config: AppConfig, on_ready: Callable[[int], None] | None = None) -> None:
    """Run the service in the foreground until SIGINT/SIGTERM."""
    configure_compute_threads(config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with open_feature_store(config) as store:
        ensure_features_loaded(config, store)
        server = CascadeServer(config, store)
        port = server.start()
        try:
            server.load_models()
            server.watch_artifacts()
            if on_ready is not None:
                on_ready(port)
            stop.wait()
        finally:
            server.stop()
