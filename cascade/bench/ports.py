"""Free ports on loopback, for the processes the harnesses (and the tests) start."""

from __future__ import annotations

import random
import socket


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_cluster_port(taken: set[int] | None = None, attempts: int = 200) -> int:
    """A free port whose cluster bus port (10000 higher) is free too, as a Redis Cluster node needs. Both
    lie below the ports the kernel hands out (32768 on), so that no other socket takes one meanwhile.
    ``taken``: ports already given to other nodes (neither port may be one of them); updated."""
    taken = taken if taken is not None else set()
    for _ in range(attempts):
        port = random.randrange(12_000, 22_000)
        if port in taken or port + 10_000 in taken:
            continue
        try:
            with socket.socket() as data, socket.socket() as bus:
                data.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10_000))
            taken.update((port, port + 10_000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free pair of ports for a Redis Cluster node")
