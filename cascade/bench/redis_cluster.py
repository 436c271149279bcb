"""Real Redis Cluster and Sentinel deployments on loopback ports, made of redis-server processes
(``RedisProcess``), for the scale-out tests and benchmarks: masters to kill, replicas to promote.

The cluster is created by ``redis-cli --cluster create``, as an operator would; the Sentinel group is one
master, its replicas and three sentinels that agree (quorum 2) to promote a replica.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import TypeVar

import redis

from cascade.bench.ports import free_cluster_port, free_port
from cascade.bench.redis_process import RedisProcess, redis_cli_binary, redis_server_binary
from cascade.serving.feature_store.redis_store import online_replica_count

_POLL_S = 0.05


D = TypeVar("D", bound="_Deployment")


class _Deployment:
    """Redis processes started together and stopped together: a failed start stops what it had started."""

    start_timeout_s = 30.0

    def start(self: D, timeout_s: float | None = None) -> D:
        try:
            self._start(self.start_timeout_s if timeout_s is None else timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout_s: float) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: D) -> D:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisClusterProcesses(_Deployment):
    """Masters and their replicas, formed into a cluster by ``redis-cli --cluster create``."""

    start_timeout_s = 60.0

    def __init__(
        self,
        directory: Path | str,
        masters: int = 3,
        replicas_per_master: int = 1,
        node_timeout_ms: int = 1000,
        fsync: str = "everysec",
    ):
        """``node_timeout_ms``: how long a node may not answer before the others fail it over to its
        replica (Redis's ``cluster-node-timeout``)."""
        self.directory = Path(directory).resolve()
        self.masters = masters
        self.replicas_per_master = replicas_per_master
        options = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            # a replica takes over however long it was cut off: these tests kill masters on purpose
            "--cluster-replica-validity-factor", "0",
            # the other masters keep serving their slots while one's are uncovered (Redis's default stops
            # the whole cluster): what the README asks of a production cluster
            "--cluster-require-full-coverage", "no",
        )  # fmt: skip
        count = masters * (1 + replicas_per_master)
        taken: set[int] = set()  # one node's bus port must not be another's data port
        self.nodes = [
            RedisProcess(
                self.directory / f"node-{i}", free_cluster_port(taken), fsync=fsync, extra_args=options
            )
            for i in range(count)
        ]

    @property
    def url(self) -> str:
        """How Cascade reaches the cluster: any node is enough, all are given."""
        return "redis-cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def _start(self, timeout_s: float) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                redis_cli_binary(), "--cluster", "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes",
            ],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout_s,
        )  # fmt: skip
        self.wait_until_ready(timeout_s)

    def client(self, node: RedisProcess) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2.0, socket_connect_timeout=1.0)

    def wait_until_ready(self, timeout_s: float = 30.0) -> None:
        """Until every running node says the cluster is ok and every master has its replicas in sync."""
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not become ready; see {self.directory}/node-*/redis.log")
            time.sleep(_POLL_S)

    def _ready(self) -> bool:
        masters = 0
        for node in self.nodes:
            if not node.running:
                continue
            client = self.client(node)
            try:
                if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
                role = client.execute_command("ROLE")
                if role[0] == b"master":
                    masters += 1
                elif role[3] != b"connected":  # a replica still syncing
                    return False
            except (redis.RedisError, OSError):
                return False
            finally:
                client.close()
        return masters == self.masters

    def master_of(self, key: bytes | str) -> RedisProcess:
        """The node serving ``key``'s slot now."""
        for node in self.nodes:
            if not node.running:
                continue
            client = self.client(node)
            try:
                slot = client.execute_command("CLUSTER", "KEYSLOT", key)
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        return self._node_at(int(master[1]))
            except (redis.RedisError, OSError):
                continue
            finally:
                client.close()
        raise RuntimeError("no running node answered")

    def wait_for_new_master(self, key: bytes | str, old: RedisProcess, timeout_s: float = 30.0) -> float:
        """Seconds until ``key``'s slot is served by another node than ``old`` (its replica, promoted)."""
        started = time.monotonic()
        while True:
            with contextlib.suppress(RuntimeError):
                if self.master_of(key) is not old and self._slot_state_ok():
                    return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"no replica took over from node {old.port} within {timeout_s} s")
            time.sleep(_POLL_S)

    def _slot_state_ok(self) -> bool:
        for node in self.nodes:
            if node.running:
                client = self.client(node)
                try:
                    return b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO")
                except (redis.RedisError, OSError):
                    continue
                finally:
                    client.close()
        return False

    def _node_at(self, port: int) -> RedisProcess:
        return next(node for node in self.nodes if node.port == port)

    def stop(self) -> None:
        for node in self.nodes:
            node.request_stop()
        for node in self.nodes:
            node.stop()


class RedisSentinelGroup(_Deployment):
    """One master, ``replicas`` replicas and three sentinels watching them as ``service``."""

    def __init__(
        self,
        directory: Path | str,
        service: str = "cascade",
        replicas: int = 1,
        down_after_ms: int = 1000,
        fsync: str = "everysec",
    ):
        self.directory = Path(directory).resolve()
        self.service = service
        self.down_after_ms = down_after_ms
        self.master = RedisProcess(self.directory / "master", free_port(), fsync=fsync)
        self.replicas = [
            RedisProcess(
                self.directory / f"replica-{i}",
                free_port(),
                fsync=fsync,
                extra_args=("--replicaof", "127.0.0.1", str(self.master.port)),
            )
            for i in range(replicas)
        ]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._sentinels: list[subprocess.Popen] = []

    @property
    def data_nodes(self) -> list[RedisProcess]:
        return [self.master, *self.replicas]

    @property
    def url(self) -> str:
        return (
            f"redis-sentinel://{','.join(f'127.0.0.1:{port}' for port in self.sentinel_ports)}/{self.service}"
        )

    def _start(self, timeout_s: float) -> None:
        for node in self.data_nodes:
            node.start()
        for i, port in enumerate(self.sentinel_ports):
            folder = self.directory / f"sentinel-{i}"
            folder.mkdir(parents=True, exist_ok=True)
            config = folder / "sentinel.conf"  # the sentinel rewrites it with what it learns
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} {max(self.down_after_ms * 3, 3000)}\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            self._sentinels.append(
                subprocess.Popen(
                    [redis_server_binary(), str(config), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + timeout_s
        while (
            self.serving_master() != self.master.port
            or not self._replicas_known()
            or not self._replicas_online()
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the sentinels did not agree; see {self.directory}/sentinel-*/sentinel.log"
                )
            time.sleep(_POLL_S)

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0, socket_connect_timeout=0.5)

    def serving_master(self) -> int | None:
        """The master's port as a majority of the sentinels name it, None while they disagree."""
        named: dict[int, int] = {}
        for port in self.sentinel_ports:
            client = self._sentinel(port)
            try:
                address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                if address:
                    named[int(address[1])] = named.get(int(address[1]), 0) + 1
            except (redis.RedisError, OSError):
                pass
            finally:
                client.close()
        for master, votes in named.items():
            if votes >= 2:
                return master
        return None

    def _replicas_known(self) -> bool:
        client = self._sentinel(self.sentinel_ports[0])
        try:
            known = client.execute_command("SENTINEL", "REPLICAS", self.service)
            return len(known) >= len(self.replicas)
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def _replicas_online(self) -> bool:
        """Every replica in sync with the master (INFO's state=online)."""
        client = self.client(self.master)
        try:
            return online_replica_count(client) >= len(self.replicas)
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def client(self, node: RedisProcess) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2.0, socket_connect_timeout=1.0)

    def wait_for_new_master(self, old: RedisProcess, timeout_s: float = 30.0) -> float:
        started = time.monotonic()
        while self.serving_master() in (None, old.port):
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"the sentinels promoted no replica within {timeout_s} s")
            time.sleep(_POLL_S)
        return time.monotonic() - started

    def stop(self) -> None:
        for sentinel in self._sentinels:
            sentinel.terminate()
        for sentinel in self._sentinels:
            try:
                sentinel.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sentinel.kill()
        for node in self.data_nodes:
            node.request_stop()
        for node in self.data_nodes:
            node.stop()
