"""`cascade bench stages`: every Recommend stage in-process, without gRPC transport.

The service's own handler answers real requests for real users against the real feature store (Redis) and
the loaded models; each stage is timed where the server times it. Comparing its total with `bench serve`
at a low rate separates model cost from transport and queueing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cascade.bench import report as report_io
from cascade.bench.report import percentiles
from cascade.bench.serve_load import STAGES
from cascade.config import AppConfig
from cascade.serving.api import recommender_pb2 as pb
from cascade.serving.feature_store.base import OnlineFeatureStore
from cascade.serving.models import ServingModels
from cascade.serving.server import RecommenderService

ALL_STAGES = (*STAGES, "wire_encode")


@dataclass(frozen=True)
class StageSettings:
    requests: int = 300
    warmup: int = 30
    k: int = 20
    seed: int = 0


def run(
    config: AppConfig,
    store: OnlineFeatureStore,
    user_ids: np.ndarray,
    settings: StageSettings,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Answer ``settings.requests`` requests of users drawn from ``user_ids`` in this process, one at a
    time, with the threads serving gives each request; per stage p50 / p99 / mean in ms."""
    from cascade.serving.app import configure_serving_process

    configure_serving_process(config)
    models = ServingModels.load(config.artifact_store(), config)
    service = RecommenderService(config, store)
    service.install(models)
    rng = np.random.default_rng(settings.seed)
    users = rng.choice(user_ids, size=settings.warmup + settings.requests)
    per_stage: dict[str, list[float]] = {stage: [] for stage in ALL_STAGES}
    totals, candidates = [], []
    pipeline = service.require_pipeline()
    if progress is not None:
        progress(f"{settings.requests} requests after {settings.warmup} warm-up")
    for n, user in enumerate(users.tolist()):
        request = pb.RecommendRequest(user_id=str(user), k=settings.k)
        started = time.perf_counter()
        reply = service.Recommend(request, None)
        encode_start = time.perf_counter()
        reply.SerializeToString()
        done = time.perf_counter()
        if n < settings.warmup:
            continue
        for stage in STAGES:
            per_stage[stage].append(reply.stage_ms.get(stage, 0.0))
        per_stage["wire_encode"].append((done - encode_start) * 1e3)
        totals.append((done - started) * 1e3)
        if len(candidates) < 50:
            state = store.get_user_state(user, models.history_length)
            ctx = service.user_context(pipeline, user, state, ("", 0, "", ""))
            candidates.append(len(pipeline.recall(ctx)[0].items))
    return {
        "benchmark": "stages",
        "settings": asdict(settings),
        "context": {
            "dataset": config.data.dataset,
            "ranker": config.ranking.type,
            "ranker_precision": config.serving.ranker_precision,
            "index_factory": config.recall.index_factory,
            "catalogue_items": int(models.schema.num_items - 1),
            "mean_candidates": float(np.mean(candidates)) if candidates else 0.0,
            "history_length": models.history_length,
            "compute_threads": config.serving.compute_threads,
            "versions": models.versions,
            "rules": pipeline.rules.version,
            "active_rules": len(pipeline.rules.rules.rules) if pipeline.rules.rules is not None else 0,
        },
        "stages": {stage: percentiles(values) for stage, values in per_stage.items()},
        "total_ms": percentiles(totals),
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = report["stages"]
    names = list(stages)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = np.arange(len(names))
    ax.bar(x - 0.2, [stages[s]["p50"] for s in names], width=0.4, label="p50")
    ax.bar(x + 0.2, [stages[s]["p99"] for s in names], width=0.4, label="p99")
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("ms per request")
    ctx = report["context"]
    ax.set_title(
        f"Recommend stages in-process: {ctx['dataset']}, {ctx['catalogue_items']:,} items, "
        f"{ctx['ranker']} over {ctx['mean_candidates']:.0f} candidates"
    )
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict) -> str:
    ctx = report["context"]
    lines = [
        "# Recommend stages, in-process",
        "",
        f"{ctx['dataset']}: {ctx['catalogue_items']:,} items ({ctx['index_factory']}), "
        f"ranker {ctx['ranker']} over "
        f"{ctx['mean_candidates']:.0f} candidates on average and {ctx['history_length']} behaviours, "
        f"{ctx['compute_threads']} compute thread(s); {report['settings']['requests']} requests, k = "
        f"{report['settings']['k']}; rules {ctx.get('rules', 'none')} ({ctx.get('active_rules', 0)} rules).",
        "",
        "| stage | p50 ms | p99 ms | mean ms |",
        "|---|---|---|---|",
    ]
    for stage, values in report["stages"].items():
        lines.append(f"| {stage} | {values['p50']:.3f} | {values['p99']:.3f} | {values['mean']:.3f} |")
    t = report["total_ms"]
    lines.append(f"| **handler + encode** | {t['p50']:.3f} | {t['p99']:.3f} | {t['mean']:.3f} |")
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, json_path: Path) -> dict[str, Path]:
    return report_io.write_outputs(report, json_path, plot, markdown)
