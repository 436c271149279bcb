"""Helpers the tests share: free ports on loopback, and reading item ids out of a response."""

from __future__ import annotations

import socket

USER = 1  # a real ML-100K user with 272 ratings


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive free ports."""
    while True:
        first = free_port()
        try:
            for offset in range(1, count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", first + offset))
            return first
        except OSError:
            continue


def item_ids(reply) -> list[int]:
    """The item ids of a Recommend or SimilarItems response, in order."""
    return [int(item.item_id) for item in reply.items]
