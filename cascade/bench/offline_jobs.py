"""Offline-jobs benchmark: each job that grows with the data, in this process and on a local Ray with 1
and with 2 workers, on one synthetic data set (10M interactions by default), side by side in one run.

Every job is timed from its call to its result in this process: on Ray that includes cutting the input
into parts, shipping them and the job to the workers and gathering the parts' results (Ray's own start is
timed apart, once per worker count). Each Ray result is checked against the in-process one: equal to the
bit. The ranking examples are checked against an in-process run on one thread: their exact search and
similarity features are matrix products, whose last bit depends on the BLAS's thread count, and a Ray
worker runs one.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from cascade.bench.report import write_outputs as write_report
from cascade.config import AppConfig
from cascade.core.engines import LOCAL, OfflineConfig, OfflineEngine, PartitionedJob, PartResult
from cascade.core.seeding import seed_everything
from cascade.customers.indicators import customer_indicators
from cascade.customers.log import CustomerLog
from cascade.data.synthetic import generate
from cascade.data.synthetic_commerce import generate_commerce
from cascade.recall.channels import RecallChannels
from cascade.recall.training import embed_items, embed_users
from cascade.recall.two_tower import TwoTowerModel, TwoTowerSpec
from cascade.training.prepare import prepare_dataset
from cascade.training.ranking import CandidateSources, item_statistics, labelled_candidates
from cascade.training.recall import count_segments, mine_rules

logger = logging.getLogger(__name__)

JOBS = (
    "item statistics",
    "co-occurrence rules",
    "item embeddings",
    "user embeddings",
    "customer indicators",
    "ranking examples",
)


@dataclasses.dataclass(frozen=True)
class OfflineBenchSettings:
    interactions: int = 10_000_000
    users: int = 200_000
    items: int = 100_000
    ranking_users: int = 5_000  # users whose ranking examples are built (each costs a request's features)
    workers: tuple[int, ...] = (1, 2)
    partitions: int = 8
    object_store_mb: int = 4096
    seed: int = 0
    jobs: tuple[str, ...] = JOBS


def _equal(a, b) -> bool:
    """Two job results equal to the bit: frames, arrays, or objects of arrays and numbers field by field."""
    if isinstance(a, pd.DataFrame):
        return a.equals(b) and a.index.equals(b.index)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))
    names = [f.name for f in dataclasses.fields(a)] if dataclasses.is_dataclass(a) else list(vars(a))
    return all(
        _equal(x, y) if isinstance(x, np.ndarray) else x == y
        for x, y in ((getattr(a, n), getattr(b, n)) for n in names)
    )


class _Workload:
    """The data set and everything the jobs read, built once."""

    def __init__(self, settings: OfflineBenchSettings, progress):
        started = time.perf_counter()
        seed_everything(settings.seed)
        dataset = generate(settings.users, settings.items, settings.interactions, seed=settings.seed)
        self.config = AppConfig.model_validate({"seed": settings.seed})
        self.prep = prepare_dataset(self.config, dataset, f"offline-bench-{settings.seed}")
        self.train = self.prep.split.train
        self.sequences = self.prep.sequences(self.train)
        commerce = generate_commerce(dataset, seed=settings.seed)
        self.log = CustomerLog.of_transactions(commerce, dataset)
        self.as_of = float(self.log.events["timestamp"].max())
        rc = self.config.recall
        torch.manual_seed(settings.seed)
        spec = TwoTowerSpec.from_schema(
            self.prep.schema,
            history_length=self.config.features.history_length,
            embedding_dim=rc.embedding_dim,
            hidden_dim=rc.hidden_dim,
            history_pooling=rc.history_pooling,
            history_heads=rc.history_heads,
        )
        # untrained weights: what a job costs does not depend on what the weights are
        self.model = TwoTowerModel(spec).eval()
        self.known = np.bincount(self.sequences.item, minlength=self.prep.schema.num_items) > 0
        self.user_rows = np.arange(1, self.prep.schema.num_users)
        self.history = self.sequences.latest_history(self.user_rows, self.config.features.history_length)
        self.inner = self.prep.inner_split(self.config.data.holdout_fraction)
        inner_sequences = self.prep.sequences(self.inner.train)
        self.sources = CandidateSources(
            model=self.model,
            channels=RecallChannels(
                mine_rules(self.config, self.prep, inner_sequences),
                count_segments(self.config, self.prep, inner_sequences),
                self.config.recall,
            ),
            statistics=item_statistics(self.config, self.prep, self.inner.train),
            ratings=None,
            preferences=None,
        )
        self.ranking_users = settings.ranking_users
        self.seconds = time.perf_counter() - started
        self.sizes = {
            "interactions": len(dataset.interactions),
            "training interactions": len(self.train),
            "users": self.prep.schema.num_users - 1,
            "items": self.prep.schema.num_items - 1,
            "purchases": len(self.log.purchases),
            "sessions": len(self.log.sessions),
            "ranking users": settings.ranking_users,
        }

    def run(self, job: str, engine: OfflineEngine):
        config, prep = self.config, self.prep
        if job == "item statistics":
            return item_statistics(config, prep, self.train, engine)
        if job == "co-occurrence rules":
            return mine_rules(config, prep, self.sequences, engine)
        if job == "item embeddings":
            return embed_items(self.model, prep.items, self.known, engine=engine)
        if job == "user embeddings":
            return embed_users(self.model, prep.users, self.user_rows, self.history, engine=engine)
        if job == "customer indicators":
            return customer_indicators(self.log, self.as_of, engine)
        if job == "ranking examples":
            return labelled_candidates(
                config, prep, self.inner, self.sources, max_users=self.ranking_users, engine=engine
            )
        raise ValueError(f"unknown job {job!r}")


class _Warm(PartitionedJob):
    """Loads in a worker what the jobs import, so that no timed job pays for it."""

    name = "warm-up"

    def run_part(self, part: dict[str, np.ndarray]) -> PartResult:
        import cascade.training.ranking  # noqa: F401  (torch, faiss, lightgbm and the jobs' modules)

        time.sleep(0.5)  # long enough that the other parts go to other workers
        return {"part": part["part"]}


def _compare(job: str, got, expected) -> dict:
    if job == "ranking examples":
        same = _equal(got.batch, expected.batch) and _equal(got.labels, expected.labels)
        return {"equal": same and _equal(got.users, expected.users)}
    return {"equal": _equal(got, expected)}


def run(settings: OfflineBenchSettings, progress=None) -> dict:
    from cascade.core.engines.ray_data import RayDataEngine

    say = progress or (lambda message: None)
    say(f"generating {settings.interactions:,} interactions")
    work = _Workload(settings, progress)
    logger.info("offline bench data: %s (%.1f s)", work.sizes, work.seconds)
    jobs = [job for job in JOBS if job in settings.jobs]
    results: dict[str, dict] = {job: {} for job in jobs}
    expected = {}
    for job in jobs:
        say(f"in process: {job}")
        started = time.perf_counter()
        expected[job] = work.run(job, LOCAL)
        results[job]["in process"] = {"seconds": time.perf_counter() - started}
    # what Ray's results are checked against: the ranking examples' exact search and similarity products
    # round their last bit by the BLAS's thread count, and a Ray worker runs one thread
    if "ranking examples" in jobs:
        say("in process, one thread: ranking examples (the reference for Ray's)")
        with threadpool_limits(1):
            expected["ranking examples"] = work.run("ranking examples", LOCAL)
    ray_start = {}
    for workers in settings.workers:
        started = time.perf_counter()
        engine = RayDataEngine(
            OfflineConfig(
                engine="ray",
                workers=workers,
                partitions=settings.partitions,
                object_store_mb=settings.object_store_mb,
            )
        )
        # every worker started and its imports done before the first timed job
        engine.map_parts(_Warm(), [pd.DataFrame({"part": [i]}) for i in range(2 * workers)])
        ray_start[str(workers)] = time.perf_counter() - started
        try:
            for job in jobs:
                say(f"ray, {workers} workers: {job}")
                started = time.perf_counter()
                got = work.run(job, engine)
                seconds = time.perf_counter() - started
                results[job][f"ray {workers}"] = {"seconds": seconds, **_compare(job, got, expected[job])}
                del got
        finally:
            engine.close()
    for figures in results.values():
        if "ray 1" in figures and "ray 2" in figures:
            figures["speedup 2 vs 1 workers"] = figures["ray 1"]["seconds"] / figures["ray 2"]["seconds"]
    return {
        "benchmark": "offline jobs",
        "settings": dataclasses.asdict(settings),
        "data": work.sizes,
        "data_seconds": work.seconds,
        "ray_start_seconds": ray_start,
        "jobs": results,
        "machine": {"platform": platform.platform(), "cpus": _cpus(), "python": platform.python_version()},
        "versions": _versions(),
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _versions() -> dict:
    import ray

    return {"ray": ray.__version__, "numpy": np.__version__, "torch": torch.__version__}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = list(report["jobs"])
    runs = ["in process", *[f"ray {w}" for w in report["settings"]["workers"]]]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(runs)
    for i, name in enumerate(runs):
        values = [report["jobs"][job].get(name, {}).get("seconds", np.nan) for job in jobs]
        ax.bar(np.arange(len(jobs)) + i * width, values, width, label=name)
    ax.set_xticks(np.arange(len(jobs)) + width * (len(runs) - 1) / 2, jobs, rotation=15)
    ax.set_ylabel("seconds")
    ax.set_title(
        f"offline jobs at {report['data']['interactions']:,} interactions, {report['machine']['cpus']} CPUs"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(report: dict) -> str:
    data = report["data"]
    workers = report["settings"]["workers"]
    lines = [
        f"# Offline jobs: in process and on Ray ({data['interactions']:,} interactions)",
        "",
        f"Data: {data['users']:,} users, {data['items']:,} items, {data['training interactions']:,} training "
        f"interactions, {data['purchases']:,} purchases and {data['sessions']:,} sessions; ranking examples "
        f"for {data['ranking users']:,} users. {report['machine']['cpus']} CPUs, "
        f"{report['settings']['partitions']} parts per job. Ray's start, workers warmed (not in the times): "
        + ", ".join(f"{w} workers {s:.1f} s" for w, s in report["ray_start_seconds"].items())
        + ".",
        "",
        "| job | in process | "
        + " | ".join(f"Ray, {w} worker{'s' if w > 1 else ''}" for w in workers)
        + " | 2 vs 1 workers | same result |",
        "|---|---:|" + "---:|" * len(workers) + "---:|---|",
    ]
    for job, figures in report["jobs"].items():
        cells = [f"{figures['in process']['seconds']:.1f} s"]
        cells += [f"{figures[f'ray {w}']['seconds']:.1f} s" for w in workers]
        speedup = figures.get("speedup 2 vs 1 workers")
        same = ["bit-equal" if figures[f"ray {w}"]["equal"] else "DIFFERENT" for w in workers]
        lines.append(
            f"| {job} | " + " | ".join(cells) + f" | {speedup:.2f}x | " + ", ".join(sorted(set(same))) + " |"
            if speedup
            else f"| {job} | " + " | ".join(cells) + " | – | " + ", ".join(sorted(set(same))) + " |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, json_path: Path) -> dict[str, Path]:
    return write_report(report, json_path, plot, summary)
