"""`cascade rebuild-index`: the catalogue embedded by the current item tower, indexed, tuned and checked
against exact search, published as one index artifact."""

from __future__ import annotations

import logging
import time

import numpy as np
from tqdm import tqdm

from cascade.config import AppConfig
from cascade.core.artifacts import ArtifactRef, fingerprint
from cascade.core.engines import open_engine
from cascade.core.schema import SCHEMA_VERSION
from cascade.core.seeding import seed_everything
from cascade.recall.bundle import INDEX, RECALL, RecallBundle
from cascade.recall.index import ItemIndex
from cascade.recall.training import embed_items, embed_users
from cascade.training.prepare import reuse_current

logger = logging.getLogger(__name__)


def index_fingerprint(config: AppConfig, recall_version: str) -> str:
    rc = config.recall
    return fingerprint(
        "index", recall_version, rc.index_factory, rc.index_target_recall, rc.num_candidates, config.seed
    )


def rebuild_index(config: AppConfig, if_stale: bool = False, progress: bool = False) -> ArtifactRef:
    """Embed the catalogue with the current item tower, build the index, tune its search knob on half of
    the stored query sample, validate it against exact search on the other half, publish it atomically."""
    store = config.artifact_store()
    recall = RecallBundle(store.require(RECALL), config.pseudonyms())
    rc = config.recall
    wanted = index_fingerprint(config, recall.version)
    if if_stale and (ref := reuse_current(store, INDEX, wanted, force=False)) is not None:
        return ref
    seed_everything(config.seed)
    stages = tqdm(
        total=4, desc="index: embedding the catalogue", unit="stage", disable=not progress, leave=False
    )
    started = time.perf_counter()
    model = recall.two_tower()
    with open_engine(config.offline) as engine:
        embeddings = embed_items(model, recall.items, recall.popularity() > 0, engine=engine)
    embed_seconds = time.perf_counter() - started
    stages.set_description(f"index: building {rc.index_factory}")
    stages.update()
    index = ItemIndex.build(embeddings, rc.index_factory, config.seed)
    build_seconds = time.perf_counter() - started - embed_seconds
    stages.set_description("index: tuning its search knob")
    stages.update()
    sample = recall.query_sample()
    rows = np.arange(len(sample.history))
    # the sampled users as they are, and as new users with demographics only: both kinds are served
    queries = np.concatenate(
        [
            embed_users(model, sample.users, rows, sample.history),
            embed_users(model, sample.users, rows, np.zeros_like(sample.history)),
        ]
    )
    order = np.random.default_rng(config.seed).permutation(len(queries))
    tune_q, check_q = queries[order[::2]], queries[order[1::2]]
    k = min(rc.num_candidates, index.size)
    tuning = index.tune(tune_q, k, rc.index_target_recall)
    stages.set_description("index: checking it against exact search")
    stages.update()
    measured = index.recall_against_exact(check_q, k)
    stages.update()
    stages.close()
    if measured < rc.index_min_recall:
        raise RuntimeError(
            f"index {rc.index_factory!r} reaches recall@{k} {measured:.4f} against exact search on held-out "
            f"queries (tuned {tuning.parameter}={tuning.value}), below index_min_recall "
            f"{rc.index_min_recall}; not publishing"
        )
    metrics = {
        f"recall@{k}_vs_exact": measured,
        "embed_seconds": embed_seconds,
        "build_seconds": build_seconds,
        "total_seconds": time.perf_counter() - started,
        "items": float(index.size),
        "dim": float(index.dim),
    }
    logger.info("index %s over %d items: %s", rc.index_factory, index.size, metrics)
    return store.publish(
        INDEX,
        index.save,
        fingerprint=wanted,
        config=config.model_dump(mode="json"),
        schema_version=SCHEMA_VERSION,
        metrics=metrics,
        parents={RECALL: recall.version},
        extra={
            "index": {
                "factory": rc.index_factory,
                "dim": index.dim,
                "items": index.size,
                "search_params": index.search_params,
                "tuning": {
                    "parameter": tuning.parameter,
                    "value": tuning.value,
                    "k": tuning.k,
                    "target_recall": rc.index_target_recall,
                    "curve": {str(v): r for v, r in tuning.curve.items()},
                },
            }
        },
    )
