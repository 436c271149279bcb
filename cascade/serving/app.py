"""Running the service: the online store (embedded or external Redis), loading the data set into it
(`cascade features load`, its own step like ``feast materialize``), and the server."""

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
from cascade.core.artifacts import ArtifactRef, fingerprint
from cascade.core.logs import configure_logging
from cascade.customers.log import CustomerLog
from cascade.customers.profiles import value_profiles
from cascade.customers.value_bundle import VALUE, ValueBundle
from cascade.data.dataset import Dataset
from cascade.serving.feature_store import keys
from cascade.serving.feature_store.embedded import EmbeddedRedis
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from cascade.serving.server import CascadeServer

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def open_feature_store(config: AppConfig, timeout_s: float | None = None) -> Iterator[RedisFeatureStore]:
    """REDIS_URL / serving.redis_url if set, else an embedded redis-server that stops on exit. Calls fail
    after ``timeout_s`` (default: serving.feature_store.timeout_ms, a serving bound; a bulk load's
    pipelines need longer)."""
    embedded = None
    url = config.serving.redis_url
    if not url:
        embedded = EmbeddedRedis(config.serving.embedded_redis_path, config.serving.embedded_redis_fsync)
        url = embedded.url
    store = RedisFeatureStore.from_url(
        url,
        config.serving.user_cache_size,
        config.serving.user_cache_ttl_s,
        timeout_s=config.serving.feature_store.timeout_ms / 1e3 if timeout_s is None else timeout_s,
        pseudonyms=config.pseudonyms(),
        replica_acks=config.serving.feature_store.replica_acks,
        replica_ack_timeout_s=config.serving.feature_store.replica_ack_timeout_ms / 1e3,
    )
    try:
        store.ping()
        yield store
    finally:
        store.close()
        if embedded is not None:
            embedded.stop()


# bumped when what a load writes into profiles changes: stores loaded before are loaded again
VALUE_PROFILE_VERSION = 3


def features_marker(config: AppConfig, model: ArtifactRef | None) -> str:
    """What a load of the configured data set writes when it completes: the key layout, the data set's
    fingerprint, the history length, and what the value profiles are computed with (the value model
    ``model``'s version among it: ``served_value_model``)."""
    return fingerprint(
        "feature-load",
        keys.KEY_SCHEMA_VERSION,
        Dataset.fingerprint_of(config.data.path),
        config.features.history_length,
        VALUE_PROFILE_VERSION,
        config.customers.model_dump(mode="json"),
        model.version if model is not None else None,
    )


def served_value_model(config: AppConfig) -> ArtifactRef | None:
    """The current value model (`cascade train value`) when it was fitted on the configured data set."""
    ref = config.artifact_store().current(VALUE)
    if ref is None:
        return None
    if ref.manifest.get("dataset", {}).get("fingerprint") != Dataset.fingerprint_of(config.data.path):
        logger.warning("the value model %s was fitted on another data set: profiles get no K", ref.version)
        return None
    return ref


def load_features(
    config: AppConfig,
    store: RedisFeatureStore,
    if_changed: bool = True,
    lock_wait_s: float = 600.0,
    settle_s: float | None = None,
) -> bool:
    """Merge the configured data set's users into the store (see ``RedisFeatureStore.bulk_load``: events
    recorded online are never deleted). With ``if_changed``, nothing happens when this exact load is in the
    store already. One process loads at a time: another one waits for it to finish (then, with
    ``if_changed``, has nothing left to do). Returns whether a load happened.

    When the store's keyspace is of another key layout or history length than configured, its users move
    to a new keyspace first (``RedisFeatureStore.switch_keyspace``); servers follow within a probe interval,
    and the old keyspace is caught up and dropped ``settle_s`` later (default: several probe intervals)."""
    model = served_value_model(config)
    marker = features_marker(config, model)
    target = keys.Keyspace.for_layout(config.features.history_length, store.pseudonyms.key_id)

    def done() -> bool:
        store.refresh_keyspace()
        return store.keyspace == target and store.loaded_marker() == marker

    if if_changed and done():
        logger.info("the feature store already holds this data set's features (marker %s)", marker)
        return False
    deadline = time.monotonic() + lock_wait_s
    while (token := store.acquire_load_lock()) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"another process has been loading features for over {lock_wait_s:.0f} s")
        time.sleep(0.2)
    try:
        if if_changed and done():  # loaded by the process we waited for
            logger.info("another process loaded this data set's features (marker %s)", marker)
            return False
        dataset = Dataset.load(config.data.path, pseudonyms=store.pseudonyms)
        # every user's value tier and RFM scores beside their demographics (cascade/customers/profiles.py)
        values, scale = value_profiles(dataset.interactions, config.customers)
        # the load the values come from: events recorded later count as activity since it (customers.live)
        values["value_load"] = marker
        if model is not None:  # the method's K, its tier and the k-means segment of each customer
            as_of = float(dataset.interactions["timestamp"].max()) + 1
            scored = ValueBundle.load(model).profiles(CustomerLog.of_dataset(dataset), as_of)
            values = values.merge(scored, on="user_id", how="left")
        users = dataset.users.merge(values, on="user_id", how="outer")

        def load(keyspace: keys.Keyspace) -> None:
            store.set_value_scale(scale, keyspace)
            store.bulk_load(
                users, dataset.interactions, config.features.history_length, marker, keyspace=keyspace
            )

        if store.keyspace == target:
            load(target)
        else:
            if settle_s is None:
                # a server follows the pointer at its next probe, every breaker_reset_s
                settle_s = 3 * config.serving.feature_store.breaker_reset_s
            store.switch_keyspace(target, load, settle_s)
    finally:
        store.release_load_lock(token)
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


class ShutdownSignals:
    """SIGINT or SIGTERM sets ``stop`` (a graceful stop: drain, then finish what is in flight); a second
    one sets ``hurry`` too (cut the drain short)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.hurry = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._received)

    def _received(self, signum: int, _frame: object) -> None:
        if self.stop.is_set():
            self.hurry.set()
        else:
            logger.info("%s received: stopping gracefully", signal.Signals(signum).name)
        self.stop.set()


def _run_server(
    config: AppConfig,
    store: RedisFeatureStore,
    signals: ShutdownSignals,
    on_ready: Callable[[int], None] | None,
    process_index: int = 0,
) -> None:
    """One server in this process: bind, load the models, watch for new ones, serve until a signal."""
    configure_serving_process(config)
    server = CascadeServer(config, store, process_index=process_index, freeze_loaded_models=True)
    port = server.start()
    try:
        server.load_models()
        server.watch_artifacts()
        if on_ready is not None:
            on_ready(port)
        signals.stop.wait()
    finally:
        server.stop(hurry=signals.hurry)


def warn_if_features_missing(config: AppConfig, store: RedisFeatureStore) -> None:
    marker = store.loaded_marker()
    if marker is None:
        logger.warning(
            "the feature store holds no loaded data set: users are served as new until "
            "`cascade features load` runs"
        )
    elif marker != features_marker(config, served_value_model(config)):
        logger.warning(
            "the feature store was loaded from another data set or history length than configured; "
            "`cascade features load` merges the configured one in"
        )


def serve_forever(config: AppConfig, on_ready: Callable[[int], None] | None = None) -> None:
    """Run the service in the foreground until SIGINT/SIGTERM: in this process, or with
    ``serving.processes`` > 1 in that many child processes sharing the port. Loads nothing into the
    feature store (`cascade features load` does), so replicas starting together never touch user data."""
    signals = ShutdownSignals()
    with open_feature_store(config) as store:
        warn_if_features_missing(config, store)
        if config.serving.processes > 1:
            _serve_processes(config, store, signals, on_ready)
        else:
            _run_server(config, store, signals, on_ready)


def _serve_processes(
    config: AppConfig,
    store: RedisFeatureStore,
    signals: ShutdownSignals,
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
            args=(shared.child_json(), index, ready),
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
            if signals.stop.is_set():
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
        while not signals.stop.wait(0.5):
            if one_exited():
                logger.error("a server process exited; stopping the others")
                break
    finally:
        for child in children:
            if child.is_alive():
                os.kill(child.pid, signal.SIGTERM)  # each drains, then finishes its calls in flight
        if signals.hurry.is_set():
            for child in children:
                if child.is_alive():
                    os.kill(child.pid, signal.SIGTERM)  # a second signal: cut the drain short
        grace = config.serving.drain_s + config.serving.shutdown_grace_s + 5
        for child in children:
            child.join(timeout=grace)
            if child.is_alive():
                child.kill()
                child.join()


def _serve_child(config_json: str, index: int, ready: multiprocessing.Queue) -> None:
    """One of several server processes: its own models, thread pool and Redis connections."""
    configure_logging(prefix=f"[server {index}] ")
    config = AppConfig.model_validate_json(config_json)
    signals = ShutdownSignals()
    with open_feature_store(config) as store:
        _run_server(config, store, signals, lambda _port: ready.put(index), process_index=index)
