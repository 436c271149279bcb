"""Data-parallel training across processes with torchrun: `cascade train recall --nproc N`, and
`cascade train ranking --nproc N` for the neural rankers (DIN, Wide&Deep).

``launch`` starts ``torch.distributed.run`` (torchrun) in standalone mode, which starts N copies of this
module's ``main``; each joins one gloo process group, runs the same training command on the CPU, and the
first one publishes. The CPU is shared out: each process gets an
equal share of the cores as torch threads.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from cascade.config import AppConfig
from cascade.core.logs import configure_logging

logger = logging.getLogger(__name__)

COMMANDS = ("recall", "ranking")


def launch(command: str, nproc: int, config: AppConfig, force: bool) -> int:
    """Run ``command`` with ``config`` on ``nproc`` processes; returns torchrun's exit status."""
    if command not in COMMANDS:
        raise ValueError(f"distributed training supports {COMMANDS}, not {command!r}")
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    if command == "ranking":
        from cascade.data.dataset import Dataset
        from cascade.training.ranking import require_current_recall, require_data_parallel_ranker

        # fail here with the reason rather than in every process
        if nproc > 1:
            require_data_parallel_ranker(config)
        require_current_recall(config.artifact_store(), config, Dataset.fingerprint_of(config.data.path))
    with tempfile.TemporaryDirectory(prefix="cascade-ddp-") as folder:
        # the resolved config, CLI and environment overrides included, so every process trains the same
        config_path = Path(folder) / "config.json"
        config_path.write_text(config.child_json())  # a private temporary folder: the key may be in it
        args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
        args += [f"--nproc-per-node={nproc}", "-m", __name__, command, "--config-json", str(config_path)]
        if force:
            args.append("--force")
        env = os.environ | {"OMP_NUM_THREADS": str(_threads_per_process(nproc))}
        logger.info("starting %d training processes", nproc)
        return subprocess.run(args, env=env, check=False).returncode


def _threads_per_process(nproc: int) -> int:
    return max(1, (os.cpu_count() or 1) // nproc)


def main(argv: list[str] | None = None) -> int:
    """One training process: joins the group torchrun set up (its rendezvous in the environment)."""
    from cascade.training.ranking import train_ranking
    from cascade.training.recall import train_recall

    parser = argparse.ArgumentParser(prog="cascade.training.distributed")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--config-json", required=True)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    world = int(os.environ["WORLD_SIZE"])
    # a crash in native code (gloo, torch) prints every thread's Python stack before the process dies
    faulthandler.enable()
    # training runs on the CPU: the models' sparse id gradients need gloo's sparse all-reduce (NCCL has
    # none), and the rankers' batches are built on the CPU
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    configure_logging(logging.INFO, "auto", prefix=f"[process {rank}] ")
    torch.set_num_threads(_threads_per_process(world))
    try:
        config = AppConfig.model_validate_json(Path(args.config_json).read_text())
        train = {"recall": train_recall, "ranking": train_ranking}[args.command]
        ref = train(config, force=args.force, progress=rank == 0)
        if ref is not None:
            logger.info("published %s %s: %s", args.command, ref.version, ref.manifest["metrics"])
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
