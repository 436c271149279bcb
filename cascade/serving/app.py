"""Running the service: the online store (embedded or external Redis), its bulk load, and the server."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator

import torch
from threadpoolctl import threadpool_info, threadpool_limits

from cascade.config import AppConfig
from cascade.core.artifacts import fingerprint
from cascade.data.dataset import Dataset
from cascade.serving.feature_store import keys
from cascade.serving.feature_store.embedded import EmbeddedRedis
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from cascade.serving.server import CascadeServer

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
    path = config.data.path
    marker = fingerprint(
        "feature-load", keys.KEY_SCHEMA_VERSION, Dataset.fingerprint_of(path), config.features.history_length
    )
    if store.loaded_marker() == marker:
        logger.info("Redis already holds this dataset's features (marker %s)", marker)
        return False
    dataset = Dataset.load(path)
    store.bulk_load(dataset.users, dataset.interactions, config.features.history_length, marker)
    return True


def configure_serving_process(config: AppConfig) -> None:
    """Requests run in parallel threads, so each request's torch and FAISS work stays on
    ``compute_threads`` (default 1) and numpy's BLAS on one thread whatever it is: BLAS pools that spin
    beside the RPC threads burn cores while idle, and a multi-threaded BLAS pool beside torch's OpenMP
    threads slows DIN's served form many times over, its per-request products being too small to gain from
    threads (benchmarks/README.md has both figures). The allocator keeps per-request tensors on its heap
    (see ``keep_large_allocations_on_the_heap``)."""
    import faiss

    torch.set_num_threads(config.serving.compute_threads)
    faiss.omp_set_num_threads(config.serving.compute_threads)
    threadpool_limits(config.serving.compute_threads)  # process-wide until exit, not a context
    keep_blas_pools_on_one_thread()
    keep_large_allocations_on_the_heap()


def keep_blas_pools_on_one_thread() -> None:
    """A BLAS with its own pthreads pool (numpy's OpenBLAS) gets one thread, process-wide: its threads spin
    after each product beside OpenMP's. A BLAS running on OpenMP (FAISS's OpenBLAS) shares OpenMP's pool
    and keeps its setting."""
    own_pools = {
        pool["prefix"]: 1
        for pool in threadpool_info()
        if pool["user_api"] == "blas" and pool.get("threading_layer") == "pthreads"
    }
    if own_pools:
        threadpool_limits(own_pools)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_large_allocations_on_the_heap(
    mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20
) -> bool:
    """glibc serves each allocation above its mmap threshold (128 KiB until it adapts) with fresh pages
    and returns them on free, so every request's few-MB tensors (DIN's pair product) page-fault anew; a
    fixed 32 MiB threshold and a high trim threshold keep them on the reused heap, which halved the ranking
    stage's p99 in `cascade bench stages`. Returns whether glibc took the settings (False on other C
    libraries, where nothing changes)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
    if not ok:
        logger.warning("mallopt refused the allocator settings; per-request tensors may page-fault")
    return bool(ok)


def _stop_on_signals() -> threading.Event:
    """An event that SIGINT or SIGTERM sets."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _run_server(
    config: AppConfig,
    store: RedisFeatureStore,
    stop: threading.Event,
    on_ready: Callable[[int], None] | None,
    process_index: int = 0,
) -> None:
    """One server in this process: bind, load the models, watch for new ones, serve until ``stop``."""
    configure_serving_process(config)
    server = CascadeServer(config, store, process_index=process_index, freeze_loaded_models=True)
    port = server.start()
    try:
        server.load_models()
        server.watch_artifacts()
        if on_ready is not None:
            on_ready(port)
        stop.wait()
    finally:
        server.stop()


def serve_forever(config: AppConfig, on_ready: Callable[[int], None] | None = None) -> None:
    """Run the service in the foreground until SIGINT/SIGTERM: in this process, or with
    ``serving.processes`` > 1 in that many child processes sharing the port."""
    stop = _stop_on_signals()
    with open_feature_store(config) as store:
        ensure_features_loaded(config, store)
        if config.serving.processes > 1:
            _serve_processes(config, store, stop, on_ready)
        else:
            _run_server(config, store, stop, on_ready)


def _serve_processes(
    config: AppConfig,
    store: RedisFeatureStore,
    stop: threading.Event,
    on_ready: Callable[[int], None] | None,
    start_timeout_s: float = 600.0,
) -> None:
    """Start ``serving.processes`` servers on one port (SO_REUSEPORT: the kernel spreads connections over
    them); stop them all when ``stop`` is set or any one of them exits."""
    if config.serving.port == 0:
        raise RuntimeError("serving.port must be a fixed port when serving.processes > 1")
    if store.url is None:
        raise RuntimeError("the feature store has no URL the server processes could connect to")
    # every child connects to the Redis this process opened (an embedded one included)
    shared = config.model_copy(update={"serving": config.serving.model_copy(update={"redis_url": store.url})})
    context = multiprocessing.get_context("spawn")  # no forked copies of torch/FAISS/gRPC threads
    ready = context.Queue()
    children = [
        context.Process(
            target=_serve_child,
            args=(shared.model_dump_json(), index, ready),
            name=f"cascade-server-{index}",
        )
        for index in range(config.serving.processes)
    ]

    def one_exited() -> bool:
        return any(not child.is_alive() for child in children)

    for child in children:
        child.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        started: set[int] = set()
        while len(started) < len(children):
            if stop.is_set():
                return
            if one_exited():
                raise RuntimeError("a server process exited while starting; see its log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server processes not ready after {start_timeout_s:.0f}s")
            with contextlib.suppress(queue.Empty):
                started.add(ready.get(timeout=0.2))
        logger.info("%d server processes serving on port %d", len(children), config.serving.port)
        if on_ready is not None:
            on_ready(config.serving.port)
        while not stop.wait(0.5):
            if one_exited():
                logger.error("a server process exited; stopping the others")
                break
    finally:
        for child in children:
            if child.is_alive():
                os.kill(child.pid, signal.SIGTERM)
        for child in children:
            child.join(timeout=15)
            if child.is_alive():
                child.kill()
                child.join()


def _serve_child(config_json: str, index: int, ready: multiprocessing.Queue) -> None:
    """One of several server processes: its own models, thread pool and Redis connections."""
    logging.basicConfig(level=logging.INFO, format=f"[server {index}] %(levelname)s %(name)s: %(message)s")
    config = AppConfig.model_validate_json(config_json)
    stop = _stop_on_signals()
    with open_feature_store(config) as store:
        _run_server(config, store, stop, lambda _port: ready.put(index), process_index=index)
