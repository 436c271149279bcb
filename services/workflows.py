"""Offline workflows that compose the stages: training, index building and evaluation.

Every artifact is trained on the training part of the one temporal split, so `evaluate` measures it on
interactions it has never seen. The ranker needs labels from outside the data its candidates come from:
it trains on a nested split (the training part split again, the same way), with a recall model fitted on
the inner training part only. Nothing from the evaluation window reaches any artifact.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cascade.artifacts import ArtifactRef, ArtifactStore, fingerprint
from cascade.config import AppConfig
from cascade.data.dataset import Dataset
from cascade.data.split import TemporalSplit, temporal_split
from cascade.features import SCHEMA_VERSION, FeatureSchema, ItemFeatures, UserFeatures
from cascade.metrics import auc, evaluate_rankings
from cascade.seeding import seed_everything
from ranking.features import DENSE_FEATURES, FEATURES_VERSION, RankingBatch, RankingFeatureBuilder, UserRow
from ranking.ranker import create_ranker
from recall.index import ItemIndex, exact_search
from recall.training import embed_items, embed_users, train_two_tower
from recall.two_tower import TwoTowerModel
from services.models import CATALOGUE_FILE, POPULARITY_FILE, SCHEMA_FILE, ServingModels
from services.pipeline import RecommendationPipeline, UserContext

logger = logging.getLogger(__name__)

EVAL_RECALL_KS = (10, 50, 100)


@dataclass(frozen=True)
class Prepared:
    """A dataset with its split and encoded tables."""

    dataset: Dataset
    data_fingerprint: str
    split: TemporalSplit
    schema: FeatureSchema
    users: UserFeatures  # row i = user index i
    items: ItemFeatures  # row i = item index i


def dataset_path(config: AppConfig) -> Path:
    return Path(config.data.data_dir) / config.data.dataset


def prepare(config: AppConfig) -> Prepared:
    path = dataset_path(config)
    data_fp = Dataset.fingerprint_of(path)
    dataset = Dataset.load(path)
    split = temporal_split(dataset.interactions, config.data.holdout_fraction)
    schema = FeatureSchema.fit(
        dataset.users, dataset.items, config.features.max_genres, config.features.title_length
    )
    return Prepared(
        dataset, data_fp, split, schema, schema.user_table(dataset.users), schema.item_table(dataset.items)
    )


def _item_counts(schema: FeatureSchema, interactions: pd.DataFrame) -> np.ndarray:
    idx = schema.item_index(interactions["item_id"].to_numpy())
    return np.bincount(idx[idx > 0], minlength=schema.num_items).astype(np.float64)


def _fit_two_tower(
    config: AppConfig, prep: Prepared, interactions: pd.DataFrame, progress: bool
) -> TwoTowerModel:
    result = train_two_tower(
        config.recall,
        prep.schema,
        prep.users,
        prep.items,
        prep.schema.user_index(interactions["user_id"].to_numpy()),
        prep.schema.item_index(interactions["item_id"].to_numpy()),
        seed=config.seed,
        progress=progress,
    )
    return result.model


def recall_fingerprint(config: AppConfig, data_fp: str) -> str:
    return fingerprint(
        "recall",
        SCHEMA_VERSION,
        data_fp,
        config.seed,
        config.data.model_dump(mode="json"),
        config.features.model_dump(mode="json"),
        config.recall.model_dump(
            mode="json", exclude={"index_factory", "index_min_recall", "num_candidates"}
        ),
    )


def _reuse(store: ArtifactStore, kind: str, wanted: str, force: bool) -> ArtifactRef | None:
    current = store.current(kind)
    if current is not None and current.fingerprint == wanted and not force:
        logger.info("%s %s is up to date (fingerprint %s); reusing it", kind, current.version, wanted)
        return current
    return None


# --- recall ------------------------------------------------------------------------------------------


def _exact_topk_for_users(
    model: TwoTowerModel,
    prep: Prepared,
    item_embeddings: np.ndarray,
    user_ids: np.ndarray,
    seen: dict[int, np.ndarray],
    k: int,
    chunk: int = 2048,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Exact top-k per user with the user's ``seen`` items removed -> user id: (item indices, scores)."""
    out = {}
    nothing_seen = np.zeros(0, dtype=np.int64)
    for begin in range(0, len(user_ids), chunk):
        users = user_ids[begin : begin + chunk]
        queries = embed_users(model, prep.users, prep.schema.user_index(users))
        # widen by the longest seen list in this chunk, so k unseen items remain for everyone
        longest = max((len(seen.get(int(u), ())) for u in users), default=0)
        scores, found = exact_search(item_embeddings, queries, k + longest)
        for user, ranked, ranked_scores in zip(users.tolist(), found, scores):
            keep = ~np.isin(ranked, seen.get(user, nothing_seen))
            out[user] = (ranked[keep][:k], ranked_scores[keep][:k])
    return out


def _seen_indices(schema: FeatureSchema, interactions: pd.DataFrame) -> dict[int, np.ndarray]:
    idx = schema.item_index(interactions["item_id"].to_numpy())
    frame = pd.DataFrame({"user_id": interactions["user_id"].to_numpy(), "item": idx})
    return {int(u): g.to_numpy() for u, g in frame.groupby("user_id")["item"]}


def _positive_indices(
    schema: FeatureSchema, split: TemporalSplit, min_rating: float
) -> dict[int, np.ndarray]:
    return {u: schema.item_index(items) for u, items in split.positives(min_rating).items()}


def train_recall(config: AppConfig, force: bool = False, progress: bool = True) -> ArtifactRef:
    store = ArtifactStore(config.artifacts_dir)
    data_fp = Dataset.fingerprint_of(dataset_path(config))
    wanted = recall_fingerprint(config, data_fp)
    if (ref := _reuse(store, "recall", wanted, force)) is not None:
        return ref
    seed_everything(config.seed)
    prep = prepare(config)
    started = time.perf_counter()
    model = _fit_two_tower(config, prep, prep.split.train, progress)
    train_seconds = time.perf_counter() - started
    item_embeddings = embed_items(model, prep.items)
    positives = _positive_indices(prep.schema, prep.split, config.data.positive_min_rating)
    users = np.fromiter(positives.keys(), dtype=np.int64)
    rankings = _exact_topk_for_users(
        model, prep, item_embeddings, users, _seen_indices(prep.schema, prep.split.train), max(EVAL_RECALL_KS)
    )
    metrics = evaluate_rankings(
        {u: items for u, (items, _) in rankings.items()},
        positives,
        EVAL_RECALL_KS,
        (10,),
        prep.schema.num_items - 1,
    )
    metrics["train_seconds"] = train_seconds
    logger.info("two-tower on the held-out window: %s", {k: round(v, 4) for k, v in metrics.items()})
    popularity = _item_counts(prep.schema, prep.split.train)

    def write(folder: Path) -> None:
        model.save(folder)
        prep.schema.save(folder / SCHEMA_FILE)
        prep.dataset.items.to_parquet(folder / CATALOGUE_FILE, index=False)
        np.save(folder / POPULARITY_FILE, popularity, allow_pickle=False)

    return store.publish(
        "recall",
        write,
        fingerprint=wanted,
        config=config.model_dump(mode="json"),
        schema_version=SCHEMA_VERSION,
        metrics=metrics,
        extra={"dataset": {"name": prep.dataset.name, "fingerprint": data_fp}},
    )


# --- index -------------------------------------------------------------------------------------------


def rebuild_index(config: AppConfig, if_stale: bool = False, validation_queries: int = 500) -> ArtifactRef:
    """Embed the catalogue with the current item tower, build and validate the index, publish it."""
    store = ArtifactStore(config.artifacts_dir)
    recall_ref = store.require("recall")
    wanted = fingerprint("index", recall_ref.version, config.recall.index_factory, config.seed)
    if if_stale and (ref := _reuse(store, "index", wanted, force=False)) is not None:
        return ref
    seed_everything(config.seed)
    model = TwoTowerModel.load(recall_ref.path)
    schema = FeatureSchema.load(recall_ref.file(SCHEMA_FILE))
    items = schema.item_table(pd.read_parquet(recall_ref.file(CATALOGUE_FILE)))
    started = time.perf_counter()
    embeddings = embed_items(model, items)
    index = ItemIndex.build(embeddings, config.recall.index_factory, config.seed)
    build_seconds = time.perf_counter() - started
    # Validate with real user queries: the user tower over a sample of users (plus the unknown user).
    rng = np.random.default_rng(config.seed)
    rows = np.unique(np.concatenate([[0], rng.integers(0, schema.num_users, size=validation_queries)]))
    users = UserFeatures(
        user=rows,
        gender=np.full(len(rows), 2),
        age=np.full(len(rows), 7),
        occupation=np.zeros(len(rows), dtype=np.int64),
    )
    queries = embed_users(model, users, np.arange(len(rows)))
    k = min(config.recall.num_candidates, index.size)
    measured = index.recall_against_exact(queries, k)
    if measured < config.recall.index_min_recall:
        raise RuntimeError(
            f"index {config.recall.index_factory!r} reaches recall@{k} {measured:.4f} against exact search, "
            f"below index_min_recall {config.recall.index_min_recall}; not publishing"
        )
    metrics = {f"recall@{k}_vs_exact": measured, "build_seconds": build_seconds, "items": float(index.size)}
    logger.info("index %s over %d items: %s", config.recall.index_factory, index.size, metrics)
    return store.publish(
        "index",
        index.save,
        fingerprint=wanted,
        config=config.model_dump(mode="json"),
        schema_version=SCHEMA_VERSION,
        metrics=metrics,
        parents={"recall": recall_ref.version},
    )


# --- ranking -----------------------------------------------------------------------------------------


def _history_by_user(schema: FeatureSchema, interactions: pd.DataFrame, length: int) -> dict[int, np.ndarray]:
    """user id -> item indices of their latest ``length`` interactions, most recent first."""
    ordered = interactions.sort_values(
        ["user_id", "timestamp", "item_id"], ascending=[True, False, False], kind="mergesort"
    )
    idx = schema.item_index(ordered["item_id"].to_numpy())
    frame = pd.DataFrame({"user_id": ordered["user_id"].to_numpy(), "item": idx})
    return {int(u): g.to_numpy()[:length] for u, g in frame.groupby("user_id", sort=False)["item"]}


def _user_row(users: UserFeatures, row: int) -> UserRow:
    return UserRow(
        int(users.user[row]), int(users.gender[row]), int(users.age[row]), int(users.occupation[row])
    )


def build_ranking_examples(
    config: AppConfig, prep: Prepared, progress: bool = True
) -> tuple[RankingBatch, np.ndarray, np.ndarray]:
    """Labelled recall candidates from the nested split -> (batch, labels (N,), user id per row (N,))."""
    inner = temporal_split(prep.split.train, config.data.holdout_fraction)
    model = _fit_two_tower(config, prep, inner.train, progress)
    item_embeddings = embed_items(model, prep.items)
    labels_by_user = _positive_indices(prep.schema, inner, config.data.positive_min_rating)
    users = np.unique(inner.test["user_id"].to_numpy())
    seen = _seen_indices(prep.schema, inner.train)
    count = config.ranking.training_candidates
    candidates = _exact_topk_for_users(model, prep, item_embeddings, users, seen, count)
    builder = RankingFeatureBuilder(prep.schema, prep.items, _item_counts(prep.schema, inner.train))
    histories = _history_by_user(prep.schema, inner.train, config.features.history_length)
    rows = prep.schema.user_index(users)
    batches, labels, owners = [], [], []
    empty = np.zeros(0, dtype=np.int64)
    for user, row in zip(users.tolist(), rows.tolist()):
        cand, scores = candidates[user]
        if len(cand) == 0:
            continue
        batches.append(builder.build(_user_row(prep.users, row), histories.get(user, empty), cand, scores))
        labels.append(np.isin(cand, labels_by_user.get(user, empty)).astype(np.float32))
        owners.append(np.full(len(cand), user, dtype=np.int64))
    return RankingBatch.concat(batches), np.concatenate(labels), np.concatenate(owners)


def ranking_fingerprint(config: AppConfig, data_fp: str) -> str:
    return fingerprint(
        "ranking",
        recall_fingerprint(config, data_fp),
        config.ranking.model_dump(mode="json"),
        DENSE_FEATURES,
        FEATURES_VERSION,
    )


def train_ranking(
    config: AppConfig, force: bool = False, progress: bool = True, validation_share: float = 0.1
) -> ArtifactRef:
    store = ArtifactStore(config.artifacts_dir)
    data_fp = Dataset.fingerprint_of(dataset_path(config))
    wanted = ranking_fingerprint(config, data_fp)
    if (ref := _reuse(store, "ranking", wanted, force)) is not None:
        return ref
    seed_everything(config.seed)
    prep = prepare(config)
    batch, labels, owners = build_ranking_examples(config, prep, progress)
    rng = np.random.default_rng(config.seed)
    user_ids = np.unique(owners)
    held_users = rng.choice(user_ids, size=max(1, int(len(user_ids) * validation_share)), replace=False)
    is_val = np.isin(owners, held_users)
    ranker = create_ranker(config.ranking, prep.schema)
    started = time.perf_counter()
    metrics = ranker.fit(
        batch.take(np.flatnonzero(~is_val)), labels[~is_val], seed=config.seed, progress=progress
    )
    metrics["train_seconds"] = time.perf_counter() - started
    val_scores = ranker.score(batch.take(np.flatnonzero(is_val)))
    metrics["validation_auc"] = auc(labels[is_val], val_scores)
    metrics["validation_auc_recall_score"] = auc(labels[is_val], batch.dense[is_val, 0])
    metrics["examples"] = float(len(labels))
    metrics["positive_rate"] = float(labels.mean())
    logger.info("ranker %s: %s", config.ranking.type, {k: round(v, 4) for k, v in metrics.items()})
    return store.publish(
        "ranking",
        ranker.save,
        fingerprint=wanted,
        config=config.model_dump(mode="json"),
        schema_version=SCHEMA_VERSION,
        metrics=metrics,
        extra={"dataset": {"name": prep.dataset.name, "fingerprint": data_fp}},
    )


# --- evaluation --------------------------------------------------------------------------------------


def evaluate_pipeline(config: AppConfig) -> dict[str, dict[str, float]]:
    """Popularity, the two-tower alone and the whole pipeline on the held-out window, side by side."""
    store = ArtifactStore(config.artifacts_dir)
    models = ServingModels.load(store)
    data_fp = Dataset.fingerprint_of(dataset_path(config))
    trained_on = store.require("recall").manifest.get("dataset", {}).get("fingerprint")
    if trained_on != data_fp:
        raise RuntimeError(
            f"the served recall model was trained on dataset {trained_on}, not on "
            f"{config.data.dataset} ({data_fp}); retrain before evaluating"
        )
    prep = prepare(config)
    pipeline = RecommendationPipeline(models, config)
    positives = _positive_indices(prep.schema, prep.split, config.data.positive_min_rating)
    seen = _seen_indices(prep.schema, prep.split.train)
    histories = _history_by_user(prep.schema, prep.split.train, config.features.history_length)
    k = max(EVAL_RECALL_KS)
    empty = np.zeros(0, dtype=np.int64)
    rankings: dict[str, dict[int, np.ndarray]] = {"popularity": {}, "two_tower": {}, "pipeline": {}}
    pipeline_seconds = 0.0
    for user in positives:
        row = int(prep.schema.user_index([user])[0])
        ctx = UserContext(
            row=_user_row(prep.users, row),
            history=histories.get(user, empty),
            seen=seen.get(user, empty),
            has_profile=True,
        )
        rankings["popularity"][user] = pipeline.popular(ctx.seen, k).items
        rankings["two_tower"][user] = pipeline.recall(ctx, k).items
        started = time.perf_counter()
        rankings["pipeline"][user] = pipeline.recommend(ctx, k, empty).items
        pipeline_seconds += time.perf_counter() - started
    report = {
        name: evaluate_rankings(r, positives, EVAL_RECALL_KS, (10,), prep.schema.num_items - 1)
        for name, r in rankings.items()
    }
    report["pipeline"]["mean_in_process_ms"] = pipeline_seconds / max(len(positives), 1) * 1e3
    return report
