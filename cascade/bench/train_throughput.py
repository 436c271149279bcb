"""`cascade bench train`: two-tower training throughput, examples/s, with sparse id-table gradients (lazy
Adam, the default) beside dense ones (plain Adam over the whole tables, how training ran before), side by
side in one run on each scenario's data, and the cost of one validation pass; then the neural rankers'
(DIN, Wide&Deep) examples/s in one process and data-parallel.

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
from cascade.config import AppConfig
from cascade.core.distributed import join_local_group
from cascade.core.seeding import seed_everything
from cascade.ranking.config import RankingConfig
from cascade.ranking.features import RankingBatch
from cascade.ranking.ranker import dense_features_of
from cascade.ranking.registry import DATA_PARALLEL_RANKERS, create_ranker
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
    rankers: tuple[str, ...] = DATA_PARALLEL_RANKERS  # neural rankers timed on the scenario's schema
    ranker_steps: int = 30  # timed steps of each ranker, per process
    ranker_candidates: int = 100  # candidates per request of the rankers' batches


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
    out["rankers"] = {}
    for ranker in settings.rankers:
        say(f"{name}: {ranker} ranker, one process of {settings.threads} threads")
        with compute_threads(settings.threads):
            fastest = min(
                _time_ranker(config, prep, ranker, settings.ranker_steps, settings.ranker_candidates, 1, 0)
                for _ in range(settings.repeats)
            )
        timed = {"examples_per_s": settings.ranker_steps * _batch_size(config, ranker) / fastest}
        if settings.data_parallel > 1:
            say(f"{name}: {ranker} ranker, {settings.data_parallel} data-parallel processes")
            timed[f"data_parallel_{settings.data_parallel}_examples_per_s"] = (
                ranker_data_parallel_examples_per_s(config, ranker, settings)
            )
        out["rankers"][ranker] = timed
    return out


def _ranker_config(config: AppConfig, ranker: str) -> RankingConfig:
    """The scenario's ranking config (its dense columns) with ``ranker``'s default model, one epoch."""
    return config.ranking.model_copy(
        update={"model": RankingConfig.model_validate({"model": {"type": ranker, "epochs": 1}}).model}
    )


def ranker_batch(
    config: AppConfig, prep: Prepared, ranking: RankingConfig, examples: int, candidates: int, seed: int
) -> tuple[RankingBatch, np.ndarray]:
    """``examples`` candidates shaped as training's: real users and their latest histories, catalogue items
    with their genres and years, requests of ``candidates``; dense features and labels (10% positive)
    drawn at random, since a step's cost does not depend on their values."""
    rng = np.random.default_rng(seed)
    requests = -(-examples // candidates)
    sequences = prep.sequences(prep.split.train)
    rows = rng.choice(np.unique(sequences.user), requests)
    item = rng.integers(1, prep.schema.num_items, requests * candidates)[:examples]
    batch = RankingBatch(
        user=prep.users.user[rows],
        gender=prep.users.gender[rows],
        age=prep.users.age[rows],
        occupation=prep.users.occupation[rows],
        zip=prep.users.zip[rows],
        history=sequences.latest_history(rows, config.features.history_length),
        request=np.repeat(np.arange(requests), candidates)[:examples],
        item=item,
        genres=prep.items.genres[item],
        year=prep.items.year[item],
        channel=rng.integers(1, 4, examples),
        dense=rng.normal(size=(examples, len(dense_features_of(ranking)))).astype(np.float32),
    )
    return batch, (rng.random(examples) < 0.1).astype(np.float32)


def _time_ranker(
    config: AppConfig, prep: Prepared, ranker: str, steps: int, candidates: int, world: int, rank: int
) -> float:
    """Seconds of ``steps`` training steps of this process (one epoch over its share of a batch of
    world * steps * batch_size examples), timed after every process has built its model."""
    ranking = _ranker_config(config, ranker)
    examples = world * steps * ranking.model.batch_size
    batch, labels = ranker_batch(config, prep, ranking, examples, candidates, config.seed)
    seed_everything(config.seed)
    model = create_ranker(ranking, prep.schema, prep.items)
    if world > 1:
        dist.barrier()
    started = time.perf_counter()
    model.fit(batch, labels, seed=config.seed, progress=False)
    if world > 1:
        dist.barrier()
    return time.perf_counter() - started


def _ranker_job(config: AppConfig, world: int, rank: int, ranker: str, steps: int, candidates: int) -> str:
    return str(_time_ranker(config, prepare(config), ranker, steps, candidates, world, rank))


def ranker_data_parallel_examples_per_s(
    config: AppConfig, ranker: str, settings: TrainBenchSettings
) -> float:
    """Examples/s of ``settings.data_parallel`` processes (gloo, one thread each) training ``ranker``, each
    taking ``ranker_steps`` steps."""
    processes = settings.data_parallel
    job_args = (ranker, settings.ranker_steps, settings.ranker_candidates)
    seconds = float(_in_processes(_ranker_job, processes, config, job_args))
    return processes * settings.ranker_steps * _batch_size(config, ranker) / seconds


def _batch_size(config: AppConfig, ranker: str) -> int:
    return _ranker_config(config, ranker).model.batch_size


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


def _two_tower_job(config: AppConfig, world: int, rank: int, steps: int) -> str:
    """This process's ``steps`` two-tower steps, timed after every process has its data ready:
    "seconds steps"."""
    prep = prepare(config)
    sequences = prep.sequences(prep.split.train)
    dist.barrier()
    started = time.perf_counter()
    result = _one_epoch(config, prep, sequences, steps, sparse_ids=True)
    dist.barrier()
    return f"{time.perf_counter() - started} {result.steps}"


def data_parallel_examples_per_s(config: AppConfig, processes: int, steps: int) -> float:
    """Examples/s of ``processes`` data-parallel processes (gloo, one thread each), each taking ``steps``
    steps of ``batch_size`` examples."""
    seconds, taken = _in_processes(_two_tower_job, processes, config, (steps,)).split()
    return processes * int(taken) * config.recall.batch_size / float(seconds)


def _in_processes(job: Callable[..., str], processes: int, config: AppConfig, job_args: tuple) -> str:
    """``job(config, world, rank, *job_args)`` in ``processes`` processes joined in one gloo group, one
    torch thread each; what process 0's returned."""
    with tempfile.TemporaryDirectory() as folder:
        args = (processes, job, config.child_json(), job_args, folder)
        mp.spawn(_process, args=args, nprocs=processes, join=True)
        return Path(folder, "result").read_text()


def _process(
    rank: int, world: int, job: Callable[..., str], config_json: str, job_args: tuple, folder: str
) -> None:
    join_local_group(rank, world, folder)
    try:
        result = job(AppConfig.model_validate_json(config_json), world, rank, *job_args)
        if rank == 0:
            Path(folder, "result").write_text(result)
    finally:
        dist.destroy_process_group()


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
    timed = [
        (name, ranker, t) for name, r in report["scenarios"].items() for ranker, t in r["rankers"].items()
    ]
    if timed:
        lines += [
            "",
            "## Neural rankers",
            "",
            f"One process of {report['threads']} threads beside data-parallel processes of one thread each "
            "(gloo), on batches shaped as the scenario's training batches.",
            "",
            "| scenario | ranker | one process, examples/s | data-parallel processes, examples/s |",
            "|---|---|---:|---:|",
        ]
        for name, ranker, t in timed:
            parallel = [
                f"{k.split('_')[2]}: {v:,.0f}" for k, v in t.items() if k.startswith("data_parallel_")
            ]
            lines.append(f"| {name} | {ranker} | {t['examples_per_s']:,.0f} | {', '.join(parallel)} |")
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
