"""DIN inference benchmark: one request of C candidates against a user's L behaviours at width d.

Three implementations of the same network sizes, timed side by side in one run, interleaved request by
request so that machine noise hits them alike:

- ``straightforward``: every (candidate, behaviour) pair gets the concatenated [e_i, e_a, e_i - e_a,
  e_i * e_a] and the whole activation unit (``DIN.reference_forward``);
- ``ours``: ``DIN.forward``, the form that trains and scores offline batches: the first attention layer
  split algebraically, the behaviour and candidate parts computed once, the pair term one matrix product;
- ``served_cpu`` and ``served_cpu_bf16`` (CPU only): what a server runs per request, ``DINServing``
  (``cascade.ranking.din_serving``): the same function with its weights folded at build, the small steps in
  numpy and the products in torch, in float32 and in bfloat16 (as the benchmark scenarios serve it);
- ``deepctr_torch``: DeepCTR-Torch's DIN (``pip install -e '.[bench]'``), called on a prebuilt input tensor
  so that its data loading is not counted.

Weights are random: speed does not depend on them, and every form is checked against ``straightforward``.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cascade.bench.report import percentiles
from cascade.bench.report import write_outputs as write_report
from cascade.core.schema import RECALL_CHANNELS
from cascade.ranking.config import DINConfig, RankingConfig
from cascade.ranking.din import DIN
from cascade.ranking.din_serving import DINServing
from cascade.ranking.features import DENSE_FEATURES, RankingBatch
from cascade.ranking.torch_ranker import DINRanker
from cascade.serving.app import keep_blas_pools_on_one_thread, keep_large_allocations_on_the_heap

logger = logging.getLogger(__name__)

GENRE_DIM = 16  # d = item embedding + mean genre embedding; DeepCTR's item embedding is all d wide
NUM_GENRES, MAX_GENRES = 19, 6


@dataclass(frozen=True)
class BenchSettings:
    candidates: int = 500
    behaviours: int = 50
    dim: int = 64
    attention_hidden: tuple[int, ...] = (36,)
    hidden_dims: tuple[int, ...] = (200, 80)
    items: int = 100_000
    users: int = 100_000
    repeats: int = 200
    warmup: int = 20
    threads: int = 2
    device: str = "cpu"
    seed: int = 0


def _cardinalities(settings: BenchSettings) -> dict[str, int]:
    return {
        "user": settings.users + 1,
        "item": settings.items + 1,
        "gender": 3,
        "age": 8,
        "occupation": 22,
        "zip": 101,
        "genre": NUM_GENRES + 1,
        "year": 12,
        "channel": len(RECALL_CHANNELS) + 1,
    }


def build_ours(settings: BenchSettings) -> DIN:
    config = RankingConfig(
        model=DINConfig(
            item_dim=settings.dim - GENRE_DIM,
            genre_dim=GENRE_DIM,
            attention_hidden=settings.attention_hidden,
            attention_activation="prelu",
            hidden_dims=settings.hidden_dims,
            activation="prelu",
        ),
        # the dense features of the served 1M scenario, which trains no rating or ALS models
        rating_models=(),
        als_factors=0,
    )
    model = DIN(DINRanker.spec_of(config, _cardinalities(settings), MAX_GENRES))
    rng = np.random.default_rng(settings.seed)
    genres = np.zeros((settings.items + 1, MAX_GENRES), dtype=np.int64)
    genres[1:, :2] = rng.integers(1, NUM_GENRES + 1, (settings.items, 2))
    model.set_item_genres(torch.from_numpy(genres))
    return model.eval()


def request_batch(settings: BenchSettings, rng: np.random.Generator) -> RankingBatch:
    c, length = settings.candidates, settings.behaviours
    items = rng.integers(1, settings.items + 1, c)
    return RankingBatch(
        user=rng.integers(1, settings.users + 1, 1),
        gender=np.array([1]),
        age=np.array([3]),
        occupation=np.array([5]),
        zip=np.array([7]),
        history=rng.integers(1, settings.items + 1, (1, length)),
        request=np.zeros(c, dtype=np.int64),
        item=items,
        genres=np.zeros((c, MAX_GENRES), dtype=np.int64),
        year=rng.integers(1, 12, c),
        channel=np.ones(c, dtype=np.int64),
        dense=rng.normal(size=(c, len(DENSE_FEATURES))).astype(np.float32),
    )


class DeepCTRRunner:
    """DeepCTR-Torch's DIN at the same sizes: user fields, candidate item and year, the behaviour sequence
    sharing the item table, the dense features; attention MLP and final MLP as ours, PReLU."""

    def __init__(self, settings: BenchSettings, device: str):
        from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat, build_input_features
        from deepctr_torch.models import DIN as DeepCTRDIN

        card = _cardinalities(settings)
        small = 8
        columns = [SparseFeat(name, card[name], embedding_dim=small) for name in ("user", "gender", "age")]
        columns += [SparseFeat(name, card[name], embedding_dim=small) for name in ("occupation", "zip")]
        columns += [
            SparseFeat("item", card["item"], embedding_dim=settings.dim),
            SparseFeat("year", card["year"], embedding_dim=small),
            SparseFeat("channel", card["channel"], embedding_dim=small),
            VarLenSparseFeat(
                SparseFeat("hist_item", card["item"], embedding_dim=settings.dim, embedding_name="item"),
                maxlen=settings.behaviours,
                length_name="seq_length",
            ),
        ]
        columns += [DenseFeat(f"dense_{i}", 1) for i in range(len(DENSE_FEATURES))]
        self.index = build_input_features(columns)
        self.model = DeepCTRDIN(
            columns,
            ["item"],
            dnn_hidden_units=settings.hidden_dims,
            dnn_activation="prelu",
            att_hidden_size=settings.attention_hidden,
            att_activation="prelu",
            device=device,
        ).eval()
        self.width = max(end for _, end in self.index.values())
        self.device = device

    def inputs(self, batch: RankingBatch) -> torch.Tensor:
        """The flat (C, columns) float tensor DeepCTR models take, one row per candidate."""
        c = len(batch)
        x = np.zeros((c, self.width), dtype=np.float32)

        def put(name: str, values: np.ndarray) -> None:
            start, end = self.index[name]
            x[:, start:end] = values.reshape(c, end - start)

        for name in ("user", "gender", "age", "occupation", "zip"):
            put(name, np.repeat(getattr(batch, name), c))
        put("item", batch.item)
        put("year", batch.year)
        put("channel", batch.channel)
        put("hist_item", np.repeat(batch.history, c, axis=0))
        put("seq_length", np.full(c, (batch.history[0] > 0).sum()))
        for i in range(len(DENSE_FEATURES)):
            put(f"dense_{i}", batch.dense[:, i])
        return torch.from_numpy(x).to(self.device)


def run(settings: BenchSettings, progress=None) -> dict:
    torch.set_num_threads(settings.threads)
    # as the server does: numpy's OpenBLAS pool spins after each product, and beside torch's OpenMP threads
    # it oversubscribes the CPUs, slowing the served form and every implementation timed between its calls
    keep_blas_pools_on_one_thread()
    # the server's allocator settings: without them every few-MB tensor is fresh mmap'd pages, and a
    # process can land in a mode where the same forward takes several times longer
    heap_allocator = keep_large_allocations_on_the_heap()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    device = torch.device(settings.device)
    model = build_ours(settings).to(device)
    requests = [request_batch(settings, rng) for _ in range(8)]

    def tensors(batch: RankingBatch) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in batch.tensors().items()}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    implementations = {
        # the feature tensors are built inside the timed call for every implementation
        "straightforward": lambda b: model.reference_forward(tensors(b)),
        "ours": lambda b: model(tensors(b)),
    }
    if device.type == "cpu":
        for name, precision in (("served_cpu", "float32"), ("served_cpu_bf16", "bfloat16")):
            served = DINServing.build(model, precision)
            implementations[name] = lambda b, served=served: torch.from_numpy(served(b))
    unavailable = {}
    try:
        deepctr = DeepCTRRunner(settings, settings.device)
        implementations["deepctr_torch"] = lambda b: deepctr.model(deepctr.inputs(b))
    except ImportError as exc:
        unavailable["deepctr_torch"] = f"{exc}; install the benchmark extra: pip install -e '.[bench]'"
        logger.warning("DeepCTR-Torch not benchmarked: %s", exc)

    with torch.inference_mode():

        def largest_difference(forward) -> float:
            """Largest absolute logit difference from the straightforward form over the requests."""
            return max(
                float((forward(b) - model.reference_forward(tensors(b))).abs().max()) for b in requests
            )

        max_diffs = {
            name: largest_difference(implementations[name])
            for name in ("ours", "served_cpu", "served_cpu_bf16")
            if name in implementations
        }
        samples: dict[str, list[float]] = {name: [] for name in implementations}
        names = list(implementations)
        for step in range(settings.warmup + settings.repeats):
            if progress is not None and step % 50 == 0:
                progress(f"request {step}/{settings.warmup + settings.repeats}")
            batch = requests[step % len(requests)]
            # rotate the order so that no implementation always runs right after another
            for name in names[step % len(names) :] + names[: step % len(names)]:
                sync()
                started = time.perf_counter()
                implementations[name](batch)
                sync()
                if step >= settings.warmup:
                    samples[name].append((time.perf_counter() - started) * 1e3)
    results = {name: percentiles(s, suffix="_ms") | {"samples": len(s)} for name, s in samples.items()}
    ours = results["ours"]["p50_ms"]
    speedups = {name: r["p50_ms"] / ours for name, r in results.items() if name != "ours"}
    return {
        "benchmark": "ranking_inference",
        "settings": settings.__dict__
        | {"attention_hidden": list(settings.attention_hidden), "hidden_dims": list(settings.hidden_dims)},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "serving_allocator_settings": heap_allocator,
        },
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "max_abs_diff_vs_straightforward": max_diffs,
        "results": results,
        "p50_speedup_of_ours_over": speedups,
        "unavailable": unavailable,
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    p50 = [report["results"][n]["p50_ms"] for n in names]
    p99 = [report["results"][n]["p99_ms"] for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.bar(x - 0.2, p50, 0.4, label="p50")
    ax.bar(x + 0.2, p99, 0.4, label="p99")
    ax.set_xticks(x, names)
    ax.set_ylabel("ms per request")
    s = report["settings"]
    ax.set_title(
        f"DIN: {s['candidates']} candidates x {s['behaviours']} behaviours x d={s['dim']}, "
        f"{s['threads']} threads, {report['machine']['device']}"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# Ranking inference benchmark (DIN)",
        "",
        f"{report['created_at']} · torch {report['machine']['torch']} · {report['machine']['device']} · "
        f"{s['threads']} threads · {s['candidates']} candidates x {s['behaviours']} behaviours x d={s['dim']}"
        f" · attention MLP {s['attention_hidden']} · MLP {s['hidden_dims']}",
        "",
        "| implementation | p50 ms | p99 ms | mean ms | p50 relative to ours |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["results"].items():
        ratio = report["p50_speedup_of_ours_over"].get(name, 1.0)
        lines.append(
            f"| {name} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['mean_ms']:.3f} | {ratio:.2f}x |"
        )
    differences = ", ".join(
        f"{name} {diff:.2e}" for name, diff in report["max_abs_diff_vs_straightforward"].items()
    )
    lines += [
        "",
        "Largest absolute difference of the logits from the straightforward form: "
        f"{differences} (served_cpu_bf16: the matrix products in bfloat16, float32 accumulation).",
    ]
    for name, why in report["unavailable"].items():
        lines.append(f"{name} not measured: {why}")
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, json_path: Path) -> dict[str, Path]:
    return write_report(report, json_path, plot, summary)
