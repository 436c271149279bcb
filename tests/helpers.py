"""Helpers the tests share: free ports on loopback, and reading item ids out of a response."""

from __future__ import annotations

import faulthandler
import socket
from pathlib import Path

import torch
import torch.distributed as dist

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


def join_gloo_group(rank: int, world: int, folder: str) -> None:
    """Join a gloo process group of ``world`` spawned test processes through a file in ``folder`` (one
    folder per group): no port is picked ahead and left open for another process to take meanwhile.
    A crash in native code (gloo, torch) prints every thread's Python stack before the process dies."""
    faulthandler.enable()
    torch.set_num_threads(1)
    rendezvous = Path(folder, "gloo-rendezvous")
    dist.init_process_group("gloo", init_method=rendezvous.as_uri(), rank=rank, world_size=world)
