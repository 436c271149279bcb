"""What a training loop needs to run data-parallel in a torch.distributed process group.

One process: world 1, rank 0, and every helper here is the identity. Several (started by torchrun, see
``cascade.training.distributed``): each walks the same permutation of the examples and takes every
world-th batch of it, and process 0 decides what all must agree on (the validation metric, hence the
epoch kept and when to stop).
"""

from __future__ import annotations

import faulthandler
from pathlib import Path

import torch
import torch.distributed as dist


def distributed_context() -> tuple[int, int]:
    """(world size, this process's rank): (1, 0) unless a torch.distributed process group is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def join_local_group(rank: int, world: int, folder: str) -> None:
    """Join a gloo group of ``world`` processes spawned on this machine, one torch thread each, through a
    file in ``folder`` (one folder per group): no port is picked ahead and left open for another process to
    take meanwhile. A crash in native code (gloo, torch) prints every thread's Python stack before the
    process dies."""
    faulthandler.enable()
    torch.set_num_threads(1)
    rendezvous = Path(folder, "gloo-rendezvous")
    dist.init_process_group("gloo", init_method=rendezvous.as_uri(), rank=rank, world_size=world)


def batch_starts(examples: int, batch_size: int, world: int, rank: int) -> range:
    """Starts of this process's batches in an epoch's order of ``examples``: batch j goes to process
    j % world. Every process takes the same number of steps (DistributedDataParallel needs each step on all
    of them), so an epoch's last batches that would not reach every process are left out, and so is a
    final batch of a single example."""
    batches = examples // batch_size + (1 if examples % batch_size >= 2 else 0)
    batches -= batches % world
    if batches == 0:
        raise ValueError(f"{examples} training examples are too few for {world} processes of {batch_size}")
    return range(rank * batch_size, batches * batch_size, world * batch_size)


def from_first_process(value: float, world: int) -> float:
    """``value`` as process 0 has it, on every process."""
    if world == 1:
        return value
    shared = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(shared, src=0)
    return float(shared.item())


def buffers_from_first_process(module: torch.nn.Module, world: int) -> None:
    """Give every process process 0's buffers (batch norm's running statistics): each process updates
    its own from its own batches, and DistributedDataParallel only broadcasts them at the next forward."""
    if world == 1:
        return
    with torch.no_grad():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
