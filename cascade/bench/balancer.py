"""HAProxy in front of serving replicas on loopback ports, with the shipped configuration
(``deploy/haproxy/haproxy.cfg``) and a servers file of its own: for the tests and benchmarks that spread
calls over replicas, drain one and kill one.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from cascade.bench.ports import free_port

DEPLOY_CONFIG = Path("deploy/haproxy/haproxy.cfg")


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next(
        (path for path in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(path).exists()), None
    )
    if found is None:
        raise FileNotFoundError("no haproxy: install Debian's haproxy package (make test does)")
    return found


def recommends_answered(metrics_port: int, code: str | None = None) -> float:
    """Recommend calls a replica counted on its /metrics (of status ``code`` only, when given)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("cascade_requests_total{")
        and 'method="Recommend"' in line
        and (code is None or f'code="{code}"' in line)
    )


class HAProxyBalancer:
    def __init__(
        self,
        directory: Path | str,
        replicas: list[tuple[int, int]],
        config: Path = DEPLOY_CONFIG,
    ):
        """``replicas``: (gRPC port, metrics port) of each replica on 127.0.0.1."""
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config = Path(config).resolve()
        self.replicas = replicas
        self.port = free_port()
        self.stats_port = free_port()
        self._process: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _servers_file(self) -> Path:
        lines = ["backend cascade", "    balance leastconn"]
        lines += [
            f"    server replica-{i} 127.0.0.1:{grpc_port} check port {metrics_port}"
            for i, (grpc_port, metrics_port) in enumerate(self.replicas)
        ]
        path = self.directory / "servers.cfg"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout_s: float = 30.0) -> HAProxyBalancer:
        env = {
            **os.environ,
            "CASCADE_LB_BIND": self.target,
            "CASCADE_LB_STATS_BIND": f"127.0.0.1:{self.stats_port}",
        }
        command = [haproxy_binary(), "-db", "-f", str(self.config), "-f", str(self._servers_file())]
        check = subprocess.run([*command, "-c"], env=env, capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration: {check.stdout}{check.stderr}")
        with open(self.directory / "haproxy.log", "w") as log:  # the child keeps its own descriptor
            self._process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.server_states()
                return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"haproxy did not start; see {self.directory}/haproxy.log") from None
                time.sleep(0.05)

    def server_states(self) -> dict[str, str]:
        """replica name -> HAProxy's status of it (UP, DOWN, "UP 1/2", ...), from its stats page."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=2) as reply:
            rows = csv.DictReader(io.StringIO(reply.read().decode().lstrip("# ")))
            return {row["svname"]: row["status"] for row in rows if row["pxname"] == "cascade"
                    and row["svname"] not in ("FRONTEND", "BACKEND")}  # fmt: skip

    def wait_for(self, wanted: dict[str, str], timeout_s: float = 30.0) -> float:
        """Seconds until each named replica has the wanted status (UP or DOWN)."""
        started = time.monotonic()
        while True:
            states = self.server_states()
            if all(states.get(name, "").split(" ")[0] == status for name, status in wanted.items()):
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"replicas not {wanted} within {timeout_s} s: {states}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()

    def __enter__(self) -> HAProxyBalancer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
