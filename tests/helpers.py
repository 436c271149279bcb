"""Helpers the tests share: free ports on loopback, and reading item ids out of a response."""

from __future__ import annotations

import socket

from cascade.bench.ports import free_port
from cascade.core.privacy import Pseudonymiser

USER = 1  # a real ML-100K user with 272 ratings
# the tests' pseudonym key: in each test config (privacy.pseudonym_key) and given to each store they open
PSEUDONYM_KEY = "cascade-tests-pseudonym-key"
PSEUDONYMS = Pseudonymiser(PSEUDONYM_KEY.encode())


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
