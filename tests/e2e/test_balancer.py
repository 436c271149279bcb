"""Stateless replicas behind HAProxy with the shipped configuration (deploy/haproxy): calls spread over the
replicas, a replica stopped with SIGTERM is drained and a killed one is routed around, and callers see no
failed call either time."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import Counter

import grpc
import pytest

from cascade.bench.balancer import HAProxyBalancer, recommends_answered
from cascade.bench.redis_process import RedisProcess
from cascade.serving.client import CascadeClient
from tests.e2e.test_lifecycle import _cli, _start, _wait_serving, _write_config
from tests.helpers import free_port

pytestmark = pytest.mark.e2e

REPLICAS = 3


def test_replicas_behind_haproxy_share_calls_and_a_drained_or_killed_one_fails_none(config, built, tmp_path):
    ports = [(free_port(), free_port()) for _ in range(REPLICAS)]
    with RedisProcess(tmp_path / "redis", fsync="no") as redis_process:
        paths = [
            _write_config(config, tmp_path, f"r{i}.json", port=grpc_port, metrics_port=metrics_port,
                          redis_url=redis_process.url, drain_s=1.5, shutdown_grace_s=5.0)[0]
            for i, (grpc_port, metrics_port) in enumerate(ports)
        ]  # fmt: skip
        subprocess.run(_cli(paths[0], "features", "load"), check=True, capture_output=True, timeout=300)
        replicas = [_start(path, tmp_path / f"r{i}.log") for i, path in enumerate(paths)]
        try:
            for (grpc_port, _), replica, i in zip(ports, replicas, range(REPLICAS)):
                _wait_serving(grpc_port, replica, tmp_path / f"r{i}.log")
            with HAProxyBalancer(tmp_path / "haproxy", ports) as balancer:
                names = [f"replica-{i}" for i in range(REPLICAS)]
                balancer.wait_for(dict.fromkeys(names, "UP"))
                with CascadeClient(balancer.target, timeout_s=10) as client:
                    for i in range(60):
                        assert len(client.recommend(1 + i, k=5).items) == 5
                answered = [recommends_answered(metrics_port, code="OK") for _, metrics_port in ports]
                assert sum(answered) == 60 and min(answered) >= 10, answered  # each replica took a share

                codes: Counter[str] = Counter()
                stop = threading.Event()

                def load(worker: int) -> None:
                    n = 0
                    with CascadeClient(balancer.target, timeout_s=10) as caller:
                        while not stop.is_set():
                            try:
                                caller.recommend(1 + n % 900, k=10)
                                caller.record_event(
                                    1 + n % 900, 1 + n % 1500, "view", event_id=f"lb-{worker}-{n}"
                                )
                                codes["OK"] += 1
                            except grpc.RpcError as exc:
                                codes[exc.code().name] += 1
                            n += 1

                threads = [threading.Thread(target=load, args=(w,)) for w in range(3)]
                for thread in threads:
                    thread.start()
                try:
                    time.sleep(1.0)
                    replicas[0].send_signal(signal.SIGTERM)  # a rolling update: drained first
                    taken_out = balancer.wait_for({"replica-0": "DOWN"}, timeout_s=5)
                    assert replicas[0].wait(timeout=30) == 0
                    drained = codes["OK"]
                    replicas[1].send_signal(signal.SIGKILL)  # a crash: calls in flight are retried elsewhere
                    balancer.wait_for({"replica-1": "DOWN"}, timeout_s=5)
                    time.sleep(1.0)
                finally:
                    stop.set()
                    for thread in threads:
                        thread.join()
            assert set(codes) == {"OK"} and codes["OK"] > drained > 0, codes
            assert taken_out < 1.5  # within the drain: the replica still answered until then
            log = (tmp_path / "r0.log").read_text()
            assert "draining" in log
        finally:
            for replica in replicas:
                if replica.poll() is None:
                    replica.kill()
                    replica.wait()
