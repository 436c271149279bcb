"""`cascade bench train`: two-tower training throughput, examples/s, with sparse id-table gradients (lazy
Adam, the default) beside dense ones (plain Adam over the whole tables, how training ran before), side by
side in one run on each scenario's data, and the cost of one validation pass.

Dense Adam updates every row of the item and user tables at every step, so at a million items a step costs
the tables rather than the batch; the figure that matters is the ratio between the two at each size.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cascade.bench import report as bench_report
from cascade.bench.ports import free_port
from cascade.config import AppConfig
from cascade.core.seeding import seed_everything
from cascade.recall.training import InteractionSequences, TwoTowerTrainingResult, train_two_tower
from cascade.training.prepare import Prepared, compute_threads, prepare
from cascade.training.task import RecallTask

logger = logging.getLogger(__name__)

VARIANTS = {"sparse": True, "dense": False}  # name -> sparse_ids


@dataclass(frozen=True)
class TrainBenchSettings:
    steps: int = 40  # timed steps per variant (an epoch when it has fewer)
    threads: int = 2
    repeats: int = 2  # variants alternate this many times; the faster run of each counts
    data_parallel: int = 2  # processes of the data-parallel run (sparse ids, one thread each); 1: none


def run_scenario(
    name: str, config: AppConfig, settings: TrainBenchSettings, say: Callable[[str], None]
) -> dict:
    """Time ``settings.steps`` two-tower steps per variant on the scenario's training part."""
    prep = prepare(config)
    task = RecallTask.of(prep, prep.split, config, max_users=config.recall.validation_users)
    sequences = task.sequences
    batch = min(config.recall.batch_size, len(sequences))
    steps_per_epoch = -(-len(sequences) // batch)
    steps = min(settings.steps, steps_per_epoch)
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    model = None
    with compute_threads(settings.threads):
        for repeat in range(settings.repeats):
            for variant, sparse in VARIANTS.items():
                say(f"{name}: {variant} id gradients, {steps} steps (run {repeat + 1})")
                started = time.perf_counter()
                result = _one_epoch(config, prep, sequences, steps, sparse)
                seconds[variant].append(time.perf_counter() - started)
                model = result.model
        assert model is not None
        started = time.perf_counter()
        task.recall_at_100(model, prep)
        validation_seconds = time.perf_counter() - started
    examples = steps * batch
    out = {
        "interactions": len(sequences),
        "items": prep.schema.num_items - 1,
        "users": prep.schema.num_users - 1,
        "batch_size": batch,
        "timed_steps": steps,
        "steps_per_epoch": steps_per_epoch,
        "validation_users": len(task.users),
        "validation_seconds": validation_seconds,
    }
    for variant in VARIANTS:
        best = min(seconds[variant])
        out[f"{variant}_examples_per_s"] = examples / best
        out[f"{variant}_epoch_seconds"] = steps_per_epoch * best / steps
    out["speedup"] = out["sparse_examples_per_s"] / out["dense_examples_per_s"]
    if settings.data_parallel > 1:
        say(f"{name}: {settings.data_parallel} data-parallel processes")
        out[f"data_parallel_{settings.data_parallel}_examples_per_s"] = data_parallel_examples_per_s(
            config, settings.data_parallel, max(1, steps // settings.data_parallel)
        )
    return out


def _one_epoch(
    config: AppConfig, prep: Prepared, sequences: InteractionSequences, steps: int, sparse_ids: bool
) -> TwoTowerTrainingResult:
    """One epoch of at most ``steps`` two-tower steps, seeded as training is."""
    seed_everything(config.seed)
    return train_two_tower(
        config.recall.model_copy(update={"max_steps_per_epoch": steps}),
        prep.schema,
        prep.users,
        prep.items,
        sequences,
        seed=config.seed,
        history_length=config.features.history_length,
        epochs=1,
        progress=False,
        sparse_ids=sparse_ids,
    )


def _data_parallel_worker(rank: int, world: int, port: int, config_json: str, steps: int, out: str) -> None:
    """One process of the data-parallel variant: trains ``steps`` steps of its own, timed after every
    process has its data ready."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        config = AppConfig.model_validate_json(config_json)
        prep = prepare(config)
        sequences = prep.sequences(prep.split.train)
        dist.barrier()
        started = time.perf_counter()
        result = _one_epoch(config, prep, sequences, steps, sparse_ids=True)
        dist.barrier()
        if rank == 0:
            Path(out).write_text(f"{time.perf_counter() - started} {result.steps}")
    finally:
        dist.destroy_process_group()


def data_parallel_examples_per_s(config: AppConfig, processes: int, steps: int) -> float:
    """Examples/s of ``processes`` data-parallel processes (gloo, one thread each), each taking ``steps``
    steps of ``batch_size`` examples."""
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "seconds")
        args = (processes, free_port(), config.resolved_json(), steps, out)
        mp.spawn(_data_parallel_worker, args=args, nprocs=processes, join=True)
        seconds, taken = Path(out).read_text().split()
    return processes * int(taken) * config.recall.batch_size / float(seconds)


def summary(report: dict) -> str:
    lines = [
        "# Two-tower training throughput",
        "",
        f"{report['threads']} threads; the faster of {report['repeats']} alternating runs per variant.",
        "",
        "| scenario | items | interactions | dense Adam, examples/s | sparse (lazy Adam), examples/s | "
        "speedup | epoch, dense | epoch, sparse | one validation pass | data-parallel processes, "
        "examples/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["scenarios"].items():
        parallel = [f"{k.split('_')[2]}: {v:,.0f}" for k, v in r.items() if k.startswith("data_parallel_")]
        lines.append(
            f"| {name} | {r['items']:,} | {r['interactions']:,} | {r['dense_examples_per_s']:,.0f} | "
            f"{r['sparse_examples_per_s']:,.0f} | {r['speedup']:.1f}x | {r['dense_epoch_seconds']:.0f} s | "
            f"{r['sparse_epoch_seconds']:.0f} s | {r['validation_seconds']:.1f} s | {', '.join(parallel)} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["scenarios"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for offset, variant in ((-0.2, "dense"), (0.2, "sparse")):
        values = [report["scenarios"][n][f"{variant}_examples_per_s"] for n in names]
        ax.bar(x + offset, values, width=0.4, label=f"{variant} id gradients")
    ax.set_xticks(x, names)
    ax.set_yscale("log")
    ax.set_ylabel("examples / s")
    ax.set_title("two-tower training throughput")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(scenarios: dict[str, AppConfig], settings: TrainBenchSettings, say: Callable[[str], None]) -> dict:
    report = {
        "threads": settings.threads,
        "repeats": settings.repeats,
        "torch": torch.__version__,
        "scenarios": {name: run_scenario(name, cfg, settings, say) for name, cfg in scenarios.items()},
    }
    return report


def write_outputs(report: dict, json_path: Path) -> dict[str, Path]:
    return bench_report.write_outputs(report, json_path, plot, summary)
