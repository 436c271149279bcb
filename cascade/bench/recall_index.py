"""Recall-index benchmark: FAISS Flat, IVF and HNSW on synthetic catalogues, side by side in one run.

Embeddings are synthetic but shaped like trained two-tower outputs: unit vectors clustered around topic
centres (items of one topic share a direction, as items of one genre/taste do), and user queries mix a
few topics. Uniform random vectors would be a poor stand-in: they have no neighbourhood structure, so
every partitioning index looks worse than it does on real embeddings. Equal, well-separated clusters would
flatter it instead, so a second catalogue, ``mixture``, is a heavy-tailed mixture of unequal, overlapping
topics with a tenth of the items from no topic (``mixture_embeddings``).

For each catalogue size and index type: build time, the search knob (nprobe / efSearch) tuned to the
smallest value reaching the target recall@500 against exact search on tuning queries, then on separate
measurement queries recall@100 and recall@500 against exact search and per-query latency, single-query
(p50 / p99) and batched (p50 / p99 of per-query time within batches), plus a sweep of the knob for the
recall-vs-latency plot.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from cascade.bench.report import percentiles
from cascade.bench.report import write_outputs as write_report
from cascade.recall.index import ItemIndex, exact_search, recall_of, tunable_parameter

logger = logging.getLogger(__name__)

K_SMALL, K_LARGE = 100, 500


CATALOGUES = ("clustered", "mixture")
HNSW_MAX_ITEMS = 2_000_000  # HNSW32 is left out above this: its build alone would take most of the run


@dataclass(frozen=True)
class BenchSettings:
    sizes: tuple[int, ...] = (100_000, 1_000_000)
    catalogue: str = "clustered"  # one of CATALOGUES
    dim: int = 64
    target_recall: float = 0.95
    tuning_queries: int = 200
    measure_queries: int = 500
    batch_size: int = 256
    threads: int = 2
    seed: int = 0


def synthetic_embeddings(
    num_items: int, num_queries: int, dim: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors -> items (N, D), queries (Q, D), float32."""
    rng = np.random.default_rng(seed)
    topics = max(16, int(math.sqrt(num_items)))
    centres = rng.standard_normal((topics, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    items = np.empty((num_items, dim), dtype=np.float32)
    for start in range(0, num_items, 1 << 18):
        stop = min(start + (1 << 18), num_items)
        topic = rng.integers(0, topics, size=stop - start)
        noise = rng.standard_normal((stop - start, dim)).astype(np.float32) * (0.9 / math.sqrt(dim))
        items[start:stop] = centres[topic] + noise
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    mix = rng.dirichlet(np.full(3, 0.5), size=num_queries).astype(np.float32)
    picks = rng.integers(0, topics, size=(num_queries, 3))
    queries = np.einsum("qt,qtd->qd", mix, centres[picks])
    queries += rng.standard_normal(queries.shape).astype(np.float32) * (0.5 / math.sqrt(dim))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return items, queries.astype(np.float32)


def mixture_embeddings(
    num_items: int, num_queries: int, dim: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A heavy-tailed mixture -> items (N, D), queries (Q, D), float32 unit vectors: topics of Zipf-sized
    shares around centres that are themselves grouped (so neighbouring topics overlap), each topic with its
    own spread (log-normal) and heavy-tailed noise (Student's t, 3 degrees of freedom), and a tenth of the
    items from no topic at all (uniform on the sphere). Queries mix three topics drawn by popularity. Unlike
    ``synthetic_embeddings`` the clusters are unequal, overlapping and ragged, as a real catalogue's are,
    so that a partitioning index's lists are unequal and its recall is earned."""
    rng = np.random.default_rng([seed, 0x5EED])
    topics = max(16, int(math.sqrt(num_items)))
    groups = max(4, int(math.sqrt(topics)))
    group_centres = rng.standard_normal((groups, dim)).astype(np.float32)
    group_centres /= np.linalg.norm(group_centres, axis=1, keepdims=True)
    centres = group_centres[rng.integers(0, groups, size=topics)] + rng.standard_normal((topics, dim)).astype(
        np.float32
    ) * (0.8 / math.sqrt(dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    share = 1.0 / np.arange(1, topics + 1) ** 1.1
    share /= share.sum()
    spread = (rng.lognormal(0.0, 0.5, size=topics) * (0.9 / math.sqrt(dim))).astype(np.float32)
    items = np.empty((num_items, dim), dtype=np.float32)
    for start in range(0, num_items, 1 << 18):
        stop = min(start + (1 << 18), num_items)
        topic = rng.choice(topics, size=stop - start, p=share)
        noise = rng.standard_t(3, size=(stop - start, dim)).astype(np.float32) / math.sqrt(3.0)
        block = centres[topic] + noise * spread[topic, None]
        loose = rng.random(stop - start) < 0.1
        block[loose] = rng.standard_normal((int(loose.sum()), dim)).astype(np.float32)
        items[start:stop] = block
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    mix = rng.dirichlet(np.full(3, 0.5), size=num_queries).astype(np.float32)
    picks = rng.choice(topics, size=(num_queries, 3), p=share)
    queries = np.einsum("qt,qtd->qd", mix, centres[picks])
    queries += rng.standard_normal(queries.shape).astype(np.float32) * (0.5 / math.sqrt(dim))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return items, queries.astype(np.float32)


def catalogue_embeddings(settings: BenchSettings, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    make = {"clustered": synthetic_embeddings, "mixture": mixture_embeddings}[settings.catalogue]
    return make(num_items, settings.tuning_queries + settings.measure_queries, settings.dim, settings.seed)


def factories_for(num_items: int) -> list[str]:
    nlist = 1 << round(math.log2(4 * math.sqrt(num_items)))
    return ["Flat", f"IVF{nlist},Flat", *(["HNSW32"] if num_items <= HNSW_MAX_ITEMS else [])]


def measure_latency(index: ItemIndex, queries: np.ndarray, k: int, batch_size: int, single_limit: int):
    """Single-query latencies over up to ``single_limit`` queries and per-query time of whole batches."""
    singles = []
    for q in queries[:single_limit]:
        started = time.perf_counter()
        index.search(q[None, :], k)
        singles.append((time.perf_counter() - started) * 1e3)
    batched = []
    for start in range(0, len(queries), batch_size):
        chunk = queries[start : start + batch_size]
        started = time.perf_counter()
        index.search(chunk, k)
        batched.append((time.perf_counter() - started) * 1e3 / len(chunk))
    return percentiles(singles, suffix="_ms", mean=False), percentiles(batched, suffix="_ms", mean=False)


def bench_one(
    factory: str,
    items: np.ndarray,
    tune_q: np.ndarray,
    measure_q: np.ndarray,
    exact: tuple[np.ndarray, np.ndarray],
    settings: BenchSettings,
) -> dict:
    """``exact``: exact search's top K_SMALL and top K_LARGE of ``measure_q``."""
    started = time.perf_counter()
    index = ItemIndex.build(items, factory, settings.seed)
    build_s = time.perf_counter() - started
    # what a replica holds for this index: the index itself, and the embeddings it re-scores with
    index_bytes = int(faiss.serialize_index(index.cpu_index).nbytes)
    tuning = index.tune(tune_q, K_LARGE, settings.target_recall)
    exact_small, exact_large = exact
    # exhaustive search is slow per query past 200K items; fewer single queries keep the run bounded
    single_limit = len(measure_q)
    if factory == "Flat" and len(items) > 200_000:
        single_limit = max(20, int(100 * 1_000_000 / len(items)))

    def point(value: int | None) -> dict:
        if value is not None and tuning.parameter is not None:
            index.set_search_parameter(tuning.parameter, value)
        single, batched = measure_latency(index, measure_q, K_LARGE, settings.batch_size, single_limit)
        return {
            "value": value,
            "recall@100": recall_of(index.search(measure_q, K_SMALL)[1], exact_small),
            "recall@500": recall_of(index.search(measure_q, K_LARGE)[1], exact_large),
            "single": single,
            "batched": batched,
        }

    sweep = []
    knob = tunable_parameter(index.cpu_index)
    if knob is not None:
        _, values = knob
        chosen = tuning.value if tuning.value is not None else values[-1]
        around = [v for v in values if v <= chosen][-4:] + [v for v in values if v > chosen][:2]
        sweep = [point(v) for v in around]
    chosen_point = point(tuning.value)
    result = {
        "factory": factory,
        "items": len(items),
        "catalogue": settings.catalogue,
        "build_seconds": build_s,
        "index_bytes": index_bytes,
        "embeddings_bytes": int(items.nbytes),
        "parameter": tuning.parameter,
        "tuned_value": tuning.value,
        "tuning_recall@500": tuning.recall,
        **{k: v for k, v in chosen_point.items() if k != "value"},
        "sweep": sweep,
    }
    logger.info(
        "%s @ %d items: build %.1fs, %s=%s, recall@500 %.4f, single p50 %.3f ms p99 %.3f ms",
        factory,
        len(items),
        build_s,
        tuning.parameter,
        tuning.value,
        result["recall@500"],
        result["single"]["p50_ms"],
        result["single"]["p99_ms"],
    )
    return result


def run(settings: BenchSettings, progress=None) -> dict:
    faiss.omp_set_num_threads(settings.threads)
    results = []
    for size in settings.sizes:
        items, queries = catalogue_embeddings(settings, size)
        tune_q, measure_q = queries[: settings.tuning_queries], queries[settings.tuning_queries :]
        exact = (exact_search(items, measure_q, K_SMALL)[1], exact_search(items, measure_q, K_LARGE)[1])
        for factory in factories_for(size):
            if progress is not None:
                progress(f"{factory} over {size:,} {settings.catalogue} items")
            results.append(bench_one(factory, items, tune_q, measure_q, exact, settings))
        del items
    return {
        "benchmark": "recall_index",
        "settings": settings.__dict__ | {"sizes": list(settings.sizes)},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "faiss": faiss.__version__,
            "gpu": bool(getattr(faiss, "get_num_gpus", lambda: 0)()),
        },
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = report["settings"]["sizes"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for row in (r for r in report["results"] if r["items"] == size):
            points = row["sweep"] or [row]
            xs = [p["single"]["p99_ms"] for p in points]
            ys = [p["recall@500"] for p in points]
            ax.plot(xs, ys, marker="o", label=row["factory"])
            for p, x, y in zip(points, xs, ys):
                if p.get("value") is not None:
                    ax.annotate(
                        str(p["value"]), (x, y), fontsize=7, xytext=(3, -8), textcoords="offset points"
                    )
        ax.axhline(report["settings"]["target_recall"], color="grey", lw=0.8, ls="--")
        ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("single-query p99 latency (ms, log)")
        ax.set_ylabel("recall@500 vs exact")
        ax.set_title(
            f"{size:,} {report['settings'].get('catalogue', 'clustered')} items, "
            f"d={report['settings']['dim']}"
        )
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(report: dict) -> str:
    settings = report["settings"]
    lines = [
        f"# Recall index benchmark ({settings.get('catalogue', 'clustered')} catalogue)",
        "",
        f"{report['created_at']} · faiss {report['machine']['faiss']} · {settings['threads']} threads"
        f" · d={settings['dim']} · knob tuned to recall@500 >= {settings['target_recall']}",
        "",
        "| items | index | build s | index MB | + embeddings MB | knob | recall@100 | recall@500 "
        "| single p50 ms | single p99 ms | batched p50 ms/q | batched p99 ms/q |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        knob = f"{r['parameter']}={r['tuned_value']}" if r["parameter"] else "-"
        lines.append(
            f"| {r['items']:,} | {r['factory']} | {r['build_seconds']:.1f} "
            f"| {r.get('index_bytes', 0) / 2**20:,.0f} | {r.get('embeddings_bytes', 0) / 2**20:,.0f} "
            f"| {knob} "
            f"| {r['recall@100']:.4f} | {r['recall@500']:.4f} "
            f"| {r['single']['p50_ms']:.3f} | {r['single']['p99_ms']:.3f} "
            f"| {r['batched']['p50_ms']:.4f} | {r['batched']['p99_ms']:.4f} |"
        )
    lines += ["", "Latency is per query for k=500, measured in this process on this machine."]
    if any(size > HNSW_MAX_ITEMS for size in settings["sizes"]):
        lines.append(f"HNSW32 is left out above {HNSW_MAX_ITEMS:,} items, to keep the run bounded.")
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, json_path: Path) -> dict[str, Path]:
    return write_report(report, json_path, plot, summary)
