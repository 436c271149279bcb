"""Offline workflows that compose the stages: training, index building and evaluation.

Every artifact is trained on the training part of the one temporal split, so `evaluate` measures it on
interactions it has never seen. The ranker needs labels from outside the data its candidates come from:
it trains on a nested split (the training part split again, the same way), with a recall model fitted on
the inner training part only. Nothing from the evaluation window reaches any artifact.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits

from cascade.config import AppConfig
from cascade.core.artifacts import ArtifactRef, ArtifactStore, fingerprint
from cascade.core.metrics import auc, evaluate_rankings, gauc, logloss
from cascade.core.schema import SCHEMA_VERSION, USER_FIELDS, FeatureSchema, ItemFeatures, UserFeatures
from cascade.core.seeding import seed_everything
from cascade.data.dataset import Dataset
from cascade.data.split import TemporalSplit, temporal_split
from cascade.ranking.als_features import ALSFeatures
from cascade.ranking.features import (
    FEATURES_VERSION,
    RankingBatch,
    RankingFeatureBuilder,
    UserRow,
    encode_channels,
)
from cascade.ranking.ranker import RANKERS, Ranker, create_ranker, dense_features_of
from cascade.ranking.rating import (
    RATING_MODELS,
    USER_SIDE,
    ImplicitFeedback,
    RatingBlend,
    RatingData,
    build_rating_model,
    predict,
    rmse,
    train_rating_model,
)
from cascade.ranking.rating_features import RatingFeatureModels
from cascade.ranking.statistics import ItemStatistics
from cascade.recall.baselines import ALSRecommender, interaction_matrix, tune_als
from cascade.recall.channels import (
    ChannelCandidates,
    CooccurrenceRules,
    SegmentPopularity,
    keep_unblocked,
    merge_channels,
)
from cascade.recall.index import ItemIndex, exact_search
from cascade.recall.training import InteractionSequences, embed_items, embed_users, train_two_tower
from cascade.recall.two_tower import TwoTowerModel
from cascade.serving.models import (
    CATALOGUE_FILE,
    INNER_PREFIX,
    ITEM_STATISTICS_FILE,
    POPULARITY_FILE,
    QUERY_SAMPLE_FILE,
    SCHEMA_FILE,
    ServingModels,
)
from cascade.serving.pipeline import RecommendationPipeline, UserContext, two_tower_order

logger = logging.getLogger(__name__)

EVAL_RECALL_KS = (10, 50, 100, 500)
PIPELINE_KS = (10, 50, 100)  # the pipeline returns at most its candidate count, so no @500 for it
COVERAGE_K = 100  # catalogue coverage counts the items shown in each user's top 100
# A small grid around the values that suit MovieLens-sized data; chosen on the validation split.
ALS_GRID = {"factors": [16, 32, 64], "regularization": [0.01, 0.1, 1.0], "alpha": [1.0, 10.0, 40.0]}


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
        dataset.users,
        dataset.items,
        config.features.max_genres,
        config.features.title_length,
        config.features.zip_prefix_length,
    )
    return Prepared(
        dataset, data_fp, split, schema, schema.user_table(dataset.users), schema.item_table(dataset.items)
    )


def _item_counts(schema: FeatureSchema, interactions: pd.DataFrame) -> np.ndarray:
    idx = schema.item_index(interactions["item_id"].to_numpy())
    return np.bincount(idx[idx > 0], minlength=schema.num_items).astype(np.float64)


def sequences_of(schema: FeatureSchema, interactions: pd.DataFrame) -> InteractionSequences:
    return InteractionSequences(
        schema.user_index(interactions["user_id"].to_numpy()),
        schema.item_index(interactions["item_id"].to_numpy()),
        interactions["timestamp"].to_numpy(),
    )


def recall_fingerprint(config: AppConfig, data_fp: str) -> str:
    return fingerprint(
        "recall",
        SCHEMA_VERSION,
        data_fp,
        config.seed,
        config.data.model_dump(mode="json"),
        config.features.model_dump(mode="json"),
        config.recall.model_dump(
            mode="json",
            exclude={
                "index_factory",
                "index_min_recall",
                "index_target_recall",
                "num_candidates",
                "cooccurrence_candidates",
                "segment_popular_candidates",
                "cooccurrence_recent_items",
            },
        ),
    )


def _reuse(store: ArtifactStore, kind: str, wanted: str, force: bool) -> ArtifactRef | None:
    current = store.current(kind)
    if current is not None and current.fingerprint == wanted and not force:
        logger.info("%s %s is up to date (fingerprint %s); reusing it", kind, current.version, wanted)
        return current
    return None


# --- recall ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecallTask:
    """What ranking a user's unseen items is judged on: one split's training part and its positives.

    users: external ids (U,); rows: their user-table rows (U,); history: (U, L) latest training items;
    seen: user id -> training item indices; positives: user id -> held-out positive item indices;
    known: (num_items,) bool, items with training interactions."""

    users: np.ndarray
    rows: np.ndarray
    history: np.ndarray
    seen: dict[int, np.ndarray]
    positives: dict[int, np.ndarray]
    known: np.ndarray
    sequences: InteractionSequences

    @classmethod
    def of(
        cls, prep: Prepared, split: TemporalSplit, config: AppConfig, max_users: int | None = None
    ) -> RecallTask:
        schema = prep.schema
        positives = _positive_indices(schema, split, config.data.positive_min_rating)
        users = np.fromiter(positives, dtype=np.int64, count=len(positives))
        if max_users is not None and len(users) > max_users:
            users = np.sort(np.random.default_rng(config.seed).choice(users, max_users, replace=False))
            positives = {int(u): positives[int(u)] for u in users}
        sequences = sequences_of(schema, split.train)
        rows = schema.user_index(users)
        return cls(
            users=users,
            rows=rows,
            history=sequences.latest_history(rows, config.features.history_length),
            seen=_seen_indices(schema, split.train),
            positives=positives,
            known=np.bincount(sequences.item, minlength=schema.num_items) > 0,
            sequences=sequences,
        )

    def embed(self, model: TwoTowerModel, prep: Prepared) -> tuple[np.ndarray, np.ndarray]:
        """Item embeddings (N, D) of item indices 1..N and this task's user queries (U, D)."""
        return embed_items(model, prep.items, self.known), embed_users(
            model, prep.users, self.rows, self.history
        )

    def rankings(
        self, item_embeddings: np.ndarray, queries: np.ndarray, k: int, chunk: int = 2048
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Exact two-tower top-k of unseen items per user -> user id: (item indices, scores)."""
        out = {}
        nothing = np.zeros(0, dtype=np.int64)
        for begin in range(0, len(self.users), chunk):
            users = self.users[begin : begin + chunk]
            # widen by the longest seen list in this chunk, so k unseen items remain for everyone
            longest = max((len(self.seen.get(int(u), ())) for u in users), default=0)
            scores, found = exact_search(item_embeddings, queries[begin : begin + chunk], k + longest)
            for user, ranked, ranked_scores in zip(users.tolist(), found, scores):
                keep = keep_unblocked(ranked, self.seen.get(user, nothing), k)
                out[user] = (ranked[keep], ranked_scores[keep])
        return out

    def evaluate(self, rankings: dict[int, np.ndarray], num_items: int) -> dict[str, float]:
        return evaluate_rankings(rankings, self.positives, EVAL_RECALL_KS, (10,), num_items - 1, COVERAGE_K)

    def recall_at_100(self, model: TwoTowerModel, prep: Prepared) -> float:
        ranked = self.rankings(*self.embed(model, prep), 100)
        return evaluate_rankings({u: r for u, (r, _) in ranked.items()}, self.positives, (100,), ())[
            "recall@100"
        ]


def _seen_indices(schema: FeatureSchema, interactions: pd.DataFrame) -> dict[int, np.ndarray]:
    idx = schema.item_index(interactions["item_id"].to_numpy())
    frame = pd.DataFrame({"user_id": interactions["user_id"].to_numpy(), "item": idx})
    return {int(u): g.to_numpy() for u, g in frame.groupby("user_id")["item"]}


def _positive_indices(
    schema: FeatureSchema, split: TemporalSplit, min_rating: float
) -> dict[int, np.ndarray]:
    return {u: schema.item_index(items) for u, items in split.positives(min_rating).items()}


def _train(
    config: AppConfig,
    prep: Prepared,
    sequences: InteractionSequences,
    progress: bool,
    validation: RecallTask | None = None,
    epochs: int | None = None,
):
    return train_two_tower(
        config.recall,
        prep.schema,
        prep.users,
        prep.items,
        sequences,
        seed=config.seed,
        history_length=config.features.history_length,
        validate=None if validation is None else (lambda model: validation.recall_at_100(model, prep)),
        epochs=epochs,
        progress=progress,
    )


def _mine_rules(config: AppConfig, prep: Prepared, sequences: InteractionSequences) -> CooccurrenceRules:
    rc = config.recall
    return CooccurrenceRules.mine(
        sequences.user,
        sequences.item,
        prep.schema.num_items,
        window=rc.cooccurrence_window,
        min_support=rc.cooccurrence_min_support,
        min_confidence=rc.cooccurrence_min_confidence,
        neighbours=rc.cooccurrence_neighbours,
    )


def _count_segments(config: AppConfig, prep: Prepared, sequences: InteractionSequences) -> SegmentPopularity:
    return SegmentPopularity.count(
        prep.users.gender[sequences.user],
        prep.users.age[sequences.user],
        sequences.item,
        prep.schema.num_items,
        config.recall.segment_popular_top,
    )


def _query_sample(
    config: AppConfig, prep: Prepared, task: RecallTask, count: int = 2000
) -> dict[str, np.ndarray]:
    """Real user-tower inputs (encoded users and their histories) for tuning and validating the index."""
    rng = np.random.default_rng(config.seed)
    pick = rng.choice(len(task.rows), size=min(count, len(task.rows)), replace=False)
    rows = task.rows[pick]
    sample = {name: getattr(prep.users, name)[rows] for name in USER_FIELDS}
    sample["history"] = task.history[pick]
    return sample


def train_recall(config: AppConfig, force: bool = False, progress: bool = True) -> ArtifactRef:
    """Train the two-tower model with early stopping on a validation split, refit it on the whole training
    part for the chosen number of epochs, mine the other channels, and publish them together.

    The validation model (trained on the inner split only) is kept too: ranking draws its training
    candidates from it, so the ranker learns from candidates whose labels the recall model never saw."""
    store = ArtifactStore(config.artifacts_dir)
    data_fp = Dataset.fingerprint_of(dataset_path(config))
    wanted = recall_fingerprint(config, data_fp)
    if (ref := _reuse(store, "recall", wanted, force)) is not None:
        return ref
    seed_everything(config.seed)
    prep = prepare(config)
    inner = temporal_split(prep.split.train, config.data.holdout_fraction)
    validation = RecallTask.of(prep, inner, config, max_users=config.recall.validation_users)
    started = time.perf_counter()
    inner_result = _train(config, prep, validation.sequences, progress, validation)
    test_task = RecallTask.of(prep, prep.split, config, max_users=config.recall.validation_users)
    seed_everything(config.seed)
    final = _train(config, prep, test_task.sequences, progress, epochs=inner_result.best_epoch)
    train_seconds = time.perf_counter() - started
    rankings = test_task.rankings(*test_task.embed(final.model, prep), max(EVAL_RECALL_KS))
    metrics = test_task.evaluate({u: r for u, (r, _) in rankings.items()}, prep.schema.num_items)
    metrics.update(
        train_seconds=train_seconds,
        best_epoch=float(inner_result.best_epoch),
        validation_recall_at_100=max(inner_result.validation),
    )
    logger.info("two-tower on the held-out window: %s", {k: round(v, 4) for k, v in metrics.items()})
    popularity = _item_counts(prep.schema, prep.split.train)
    rules = _mine_rules(config, prep, test_task.sequences)
    segments = _count_segments(config, prep, test_task.sequences)
    inner_rules = _mine_rules(config, prep, validation.sequences)
    queries = _query_sample(config, prep, test_task)
    logger.info("co-occurrence: %d rules over %d items", rules.num_rules, prep.schema.num_items - 1)

    def write(folder: Path) -> None:
        final.model.save(folder)
        inner_result.model.save(folder, prefix=INNER_PREFIX)
        prep.schema.save(folder / SCHEMA_FILE)
        prep.dataset.items.to_parquet(folder / CATALOGUE_FILE, index=False)
        np.save(folder / POPULARITY_FILE, popularity, allow_pickle=False)
        rules.save(folder)
        segments.save(folder)
        inner_folder = folder / INNER_PREFIX.rstrip("_")
        inner_folder.mkdir()
        inner_rules.save(inner_folder)
        with open(folder / QUERY_SAMPLE_FILE, "wb") as fh:
            np.savez(fh, **queries)

    return store.publish(
        "recall",
        write,
        fingerprint=wanted,
        config=config.model_dump(mode="json"),
        schema_version=SCHEMA_VERSION,
        metrics=metrics,
        extra={
            "dataset": {"name": prep.dataset.name, "fingerprint": data_fp},
            "validation_curve": inner_result.validation,
            "cooccurrence_rules": rules.num_rules,
        },
    )


def evaluate_recall(config: AppConfig) -> dict[str, dict[str, float]]:
    """The published two-tower model, popularity and a validation-tuned ALS on the held-out window."""
    store = ArtifactStore(config.artifacts_dir)
    recall_ref = store.require("recall")
    _check_trained_on(recall_ref, config)
    prep = prepare(config)
    test = RecallTask.of(prep, prep.split, config)
    k = max(EVAL_RECALL_KS)
    report: dict[str, dict[str, float]] = {}
    model = TwoTowerModel.load(recall_ref.path)
    report["two_tower"] = test.evaluate(
        {u: r for u, (r, _) in test.rankings(*test.embed(model, prep), k).items()}, prep.schema.num_items
    )
    popular_order = np.argsort(-_item_counts(prep.schema, prep.split.train)[1:], kind="stable") + 1
    nothing = np.zeros(0, dtype=np.int64)
    report["popularity"] = test.evaluate(
        {
            int(u): popular_order[keep_unblocked(popular_order, test.seen.get(int(u), nothing), k)]
            for u in test.users
        },
        prep.schema.num_items,
    )
    shape = (prep.schema.num_users, prep.schema.num_items)
    inner = temporal_split(prep.split.train, config.data.holdout_fraction)
    validation = RecallTask.of(prep, inner, config)

    def matrix(task: RecallTask) -> sp.csr_matrix:
        return interaction_matrix(task.sequences.user, task.sequences.item, shape)

    def validation_recall(als: ALSRecommender) -> float:
        found = als.recommend(validation.rows, 100)
        return evaluate_rankings(
            dict(zip(validation.users.tolist(), found)), validation.positives, (100,), ()
        )["recall@100"]

    params, grid = tune_als(ALS_GRID, matrix(validation), validation_recall, config.seed)
    als = ALSRecommender(params, config.seed).fit(matrix(test))
    report["als"] = test.evaluate(
        dict(zip(test.users.tolist(), als.recommend(test.rows, k))), prep.schema.num_items
    )
    report["als"].update(
        factors=float(params.factors), regularization=params.regularization, alpha=params.alpha
    )
    report["als_grid_validation_recall@100"] = grid
    return report


def _check_trained_on(ref: ArtifactRef, config: AppConfig) -> None:
    data_fp = Dataset.fingerprint_of(dataset_path(config))
    trained_on = ref.manifest.get("dataset", {}).get("fingerprint")
    if trained_on != data_fp:
        raise RuntimeError(
            f"the current recall model was trained on dataset {trained_on}, not on "
            f"{config.data.dataset} ({data_fp}); retrain before evaluating"
        )


# --- index -------------------------------------------------------------------------------------------


def rebuild_index(config: AppConfig, if_stale: bool = False) -> ArtifactRef:
    """Embed the catalogue with the current item tower, build the index, tune its search knob on half of
    the stored query sample, validate it against exact search on the other half, publish it atomically."""
    store = ArtifactStore(config.artifacts_dir)
    recall_ref = store.require("recall")
    rc = config.recall
    wanted = fingerprint(
        "index", recall_ref.version, rc.index_factory, rc.index_target_recall, rc.num_candidates, config.seed
    )
    if if_stale and (ref := _reuse(store, "index", wanted, force=False)) is not None:
        return ref
    seed_everything(config.seed)
    started = time.perf_counter()
    model = TwoTowerModel.load(recall_ref.path)
    schema = FeatureSchema.load(recall_ref.file(SCHEMA_FILE))
    items = schema.item_table(pd.read_parquet(recall_ref.file(CATALOGUE_FILE)))
    known = np.load(recall_ref.file(POPULARITY_FILE), allow_pickle=False) > 0
    embeddings = embed_items(model, items, known)
    embed_seconds = time.perf_counter() - started
    index = ItemIndex.build(embeddings, rc.index_factory, config.seed)
    build_seconds = time.perf_counter() - started - embed_seconds
    with np.load(recall_ref.file(QUERY_SAMPLE_FILE), allow_pickle=False) as raw:
        users = UserFeatures(**{name: raw[name] for name in USER_FIELDS})
        history = raw["history"]
    rows = np.arange(len(history))
    # the sampled users as they are, and as new users with demographics only: both kinds are served
    queries = np.concatenate(
        [embed_users(model, users, rows, history), embed_users(model, users, rows, np.zeros_like(history))]
    )
    order = np.random.default_rng(config.seed).permutation(len(queries))
    tune_q, check_q = queries[order[::2]], queries[order[1::2]]
    k = min(rc.num_candidates, index.size)
    tuning = index.tune(tune_q, k, rc.index_target_recall)
    measured = index.recall_against_exact(check_q, k)
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
        "index",
        index.save,
        fingerprint=wanted,
        config=config.model_dump(mode="json"),
        schema_version=SCHEMA_VERSION,
        metrics=metrics,
        parents={"recall": recall_ref.version},
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


def rollback(config: AppConfig, kind: str, to: str | None = None) -> ArtifactRef:
    """Point ``kind``'s CURRENT back at ``to`` (default: the version before the current one).

    An index is only rolled back to a version built from the current recall model, since serving
    refuses any other combination."""
    store = ArtifactStore(config.artifacts_dir)
    target = store.get(kind, to) if to else store.previous(kind)
    if kind == "index":
        recall_now = store.require("recall").version
        built_from = target.manifest.get("parents", {}).get("recall")
        if built_from != recall_now:
            raise RuntimeError(
                f"index {target.version} was built from recall {built_from}, but the current recall is "
                f"{recall_now}; roll back recall first or pick another version"
            )
    return store.set_current(kind, target.version)


# --- ranking -----------------------------------------------------------------------------------------


def _user_row(users: UserFeatures, row: int) -> UserRow:
    return UserRow(
        int(users.user[row]),
        int(users.gender[row]),
        int(users.age[row]),
        int(users.occupation[row]),
        int(users.zip[row]),
    )


def _item_statistics(config: AppConfig, prep: Prepared, interactions: pd.DataFrame) -> ItemStatistics:
    return ItemStatistics.from_interactions(
        prep.schema, interactions, config.data.positive_min_rating, config.ranking.recent_window_days
    )


@dataclass(frozen=True)
class RankingExamples:
    """Recall candidates labelled against a split's held-out positives: batch (R requests, B candidates,
    each request's in two-tower order), labels (B,) 0/1, users (R,) external id of each request; positives:
    user id -> every held-out positive item (candidate or not), what list metrics are judged against."""

    batch: RankingBatch
    labels: np.ndarray
    users: np.ndarray
    positives: dict[int, np.ndarray]

    def split_users(self, share: float, seed: int) -> tuple[RankingExamples, RankingExamples]:
        """(the rest, a random ``share`` of the users) for picking epochs / rounds."""
        rng = np.random.default_rng(seed)
        held = np.zeros(len(self.users), dtype=bool)
        held[rng.choice(len(self.users), size=max(1, int(len(self.users) * share)), replace=False)] = True
        return self.of_requests(np.flatnonzero(~held)), self.of_requests(np.flatnonzero(held))

    def of_requests(self, requests: np.ndarray) -> RankingExamples:
        rows = np.flatnonzero(np.isin(self.batch.request, requests))
        return RankingExamples(
            self.batch.take(rows), self.labels[rows], self.users[np.sort(requests)], self.positives
        )

    def rankings(self, scores: np.ndarray) -> dict[int, np.ndarray]:
        """user id -> candidate items sorted by ``scores`` (B,), best first (ties keep recall order)."""
        out = {}
        bounds = np.cumsum(self.batch.group_sizes())[:-1]
        for user, items, s in zip(
            self.users.tolist(), np.split(self.batch.item, bounds), np.split(scores, bounds)
        ):
            out[user] = items[np.argsort(-s, kind="stable")]
        return out


def labelled_candidates(
    config: AppConfig,
    prep: Prepared,
    split: TemporalSplit,
    model: TwoTowerModel,
    rules: CooccurrenceRules,
    statistics: ItemStatistics,
    ratings: RatingFeatureModels | None,
    preferences: ALSFeatures | None = None,
    max_users: int | None = None,
) -> RankingExamples:
    """For each user with held-out positives in ``split``: the two-tower and co-occurrence candidates
    merged as serving merges them, featurised as of the user's last training interaction, labelled 1 when
    among the user's held-out positives. ``model``, ``rules``, ``statistics``, ``ratings`` and
    ``preferences`` must come from ``split.train`` only, so no feature sees the held-out window.
    ``max_users``: a seeded sample of the users, all when None."""
    task = RecallTask.of(prep, split, config, max_users=max_users)
    item_embeddings, queries = task.embed(model, prep)
    candidates = task.rankings(item_embeddings, queries, config.ranking.training_candidates)
    builder = RankingFeatureBuilder(
        prep.schema,
        prep.items,
        statistics,
        config.features.history_length,
        item_vectors=item_embeddings,
        relations=rules,
        ratings=ratings,
        preferences=preferences,
    )
    last_seen = split.train.groupby("user_id")["timestamp"].max()
    batches, labels, users = [], [], []
    empty = np.zeros(0, dtype=np.int64)
    rc = config.recall
    for i, (user, row) in enumerate(zip(task.users.tolist(), task.rows.tolist())):
        two_tower, tt_scores = candidates[user]
        seen = task.seen.get(user, empty)
        history = task.history[i][task.history[i] > 0]
        merged = merge_channels(
            [
                ChannelCandidates(two_tower, tt_scores, "two_tower"),
                rules.candidates(history[: rc.cooccurrence_recent_items], seen, rc.cooccurrence_candidates),
            ]
        )
        if len(merged) == 0:
            continue
        order, scores, vectors = two_tower_order(merged.items, item_embeddings, queries[i])
        cand = merged.items[order]
        at = float(last_seen.get(user, statistics.end))
        batches.append(
            builder.build(
                _user_row(prep.users, row),
                history,
                cand,
                scores,
                encode_channels(merged.channel_names)[merged.channels[order]],
                at,
                vectors,
            )
        )
        labels.append(np.isin(cand, task.positives.get(user, empty)).astype(np.float32))
        users.append(user)
    return RankingExamples(
        RankingBatch.concat(batches), np.concatenate(labels), np.array(users), task.positives
    )


def rating_features(
    config: AppConfig, prep: Prepared, interactions: pd.DataFrame
) -> RatingFeatureModels | None:
    """The configured rating models trained on ``interactions``' ratings; None when none are configured."""
    if not config.ranking.rating_models:
        return None
    with _compute_threads(config.ranking.threads):
        return RatingFeatureModels.fit(
            config.ranking.rating_models, prep.schema, prep.users, prep.items, interactions, config.seed
        )


def als_features(config: AppConfig, prep: Prepared, interactions: pd.DataFrame) -> ALSFeatures | None:
    """The ALS preference features trained on ``interactions``; None when ranking.als_factors is 0."""
    rc = config.ranking
    if rc.als_factors == 0:
        return None
    return ALSFeatures.fit(
        prep.schema,
        interactions,
        rc.als_factors,
        rc.als_regularization,
        rc.als_alpha,
        rc.als_iterations,
        config.seed,
        rc.threads,
    )


def ranking_training_examples(config: AppConfig, prep: Prepared, recall_ref: ArtifactRef) -> RankingExamples:
    """Labelled candidates of the nested split, from the recall artifact's validation model and rules and
    rating models, all fitted on the inner training part only."""
    inner = temporal_split(prep.split.train, config.data.holdout_fraction)
    return labelled_candidates(
        config,
        prep,
        inner,
        TwoTowerModel.load(recall_ref.path, prefix=INNER_PREFIX),
        CooccurrenceRules.load(recall_ref.path / INNER_PREFIX.rstrip("_")),
        _item_statistics(config, prep, inner.train),
        rating_features(config, prep, inner.train),
        als_features(config, prep, inner.train),
        max_users=config.ranking.max_training_users,
    )


def ranking_fingerprint(config: AppConfig, data_fp: str) -> str:
    return fingerprint(
        "ranking",
        recall_fingerprint(config, data_fp),
        config.ranking.model_dump(mode="json"),
        config.features.history_length,
        dense_features_of(config.ranking),
        FEATURES_VERSION,
    )


def _require_current_recall(store: ArtifactStore, config: AppConfig, data_fp: str) -> ArtifactRef:
    recall_ref = store.require("recall")
    if recall_ref.fingerprint != recall_fingerprint(config, data_fp):
        raise RuntimeError(
            f"the current recall artifact {recall_ref.version} was not trained with this config and data; "
            "run `cascade train recall` first"
        )
    return recall_ref


def _fit_ranker(
    config: AppConfig, prep: Prepared, examples: RankingExamples, progress: bool, ranking_type: str
) -> tuple[Ranker, dict[str, float]]:
    fit_part, val_part = examples.split_users(config.ranking.validation_share, config.seed)
    seed_everything(config.seed)
    ranker = create_ranker(config.ranking.model_copy(update={"type": ranking_type}), prep.schema, prep.items)
    started = time.perf_counter()
    with _compute_threads(config.ranking.threads):
        metrics = ranker.fit(
            fit_part.batch,
            fit_part.labels,
            seed=config.seed,
            progress=progress,
            validation=(val_part.batch, val_part.labels),
        )
    metrics["train_seconds"] = time.perf_counter() - started
    if "validation_auc" not in metrics:  # LightGBM reports its out-of-fold AUC: it trains on val_part too
        metrics["validation_auc"] = auc(val_part.labels, ranker.score(val_part.batch))
    metrics["validation_auc_recall_score"] = auc(val_part.labels, val_part.batch.dense[:, 0])
    return ranker, metrics


def train_ranking(config: AppConfig, force: bool = False, progress: bool = True) -> ArtifactRef:
    """Train the configured ranker on labelled recall candidates of the nested split and publish it with
    the item statistics serving computes its features from (over the whole training part)."""
    store = ArtifactStore(config.artifacts_dir)
    data_fp = Dataset.fingerprint_of(dataset_path(config))
    wanted = ranking_fingerprint(config, data_fp)
    if (ref := _reuse(store, "ranking", wanted, force)) is not None:
        return ref
    seed_everything(config.seed)
    recall_ref = _require_current_recall(store, config, data_fp)
    prep = prepare(config)
    examples = ranking_training_examples(config, prep, recall_ref)
    ranker, metrics = _fit_ranker(config, prep, examples, progress, config.ranking.type)
    metrics["examples"] = float(len(examples.labels))
    metrics["positive_rate"] = float(examples.labels.mean())
    logger.info("ranker %s: %s", config.ranking.type, {k: round(v, 4) for k, v in metrics.items()})
    statistics = _item_statistics(config, prep, prep.split.train)
    ratings = rating_features(config, prep, prep.split.train)
    if ratings is not None:
        metrics |= {f"rating_{k}": v for k, v in ratings.metrics.items()}
    preferences = als_features(config, prep, prep.split.train)
    if preferences is not None:
        metrics |= preferences.metrics

    def write(folder: Path) -> None:
        ranker.save(folder)
        statistics.save(folder / ITEM_STATISTICS_FILE)
        if ratings is not None:
            ratings.save(folder)
        if preferences is not None:
            preferences.save(folder)

    return store.publish(
        "ranking",
        write,
        fingerprint=wanted,
        config=config.model_dump(mode="json"),
        schema_version=SCHEMA_VERSION,
        metrics=metrics,
        parents={"recall": recall_ref.version},
        extra={"dataset": {"name": prep.dataset.name, "fingerprint": data_fp}, "ranker": config.ranking.type},
    )


@contextlib.contextmanager
def _compute_threads(threads: int) -> Iterator[None]:
    """Cap BLAS/OpenMP pools and torch's intra-op threads for offline training (torch's restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)


def ranking_report(examples: RankingExamples, scores: np.ndarray) -> dict:
    """AUC, GAUC, logloss of ``scores`` (B,) on the labelled candidates, and NDCG@10 / Recall@10 of each
    user's candidates sorted by them, against all the user's held-out positives."""
    ranked = evaluate_rankings(examples.rankings(scores), examples.positives, (10,), (10,))
    return {
        "auc": auc(examples.labels, scores),
        "gauc": gauc(examples.labels, scores, examples.batch.request),
        "logloss": logloss(examples.labels, scores),
        "ndcg@10": ranked["ndcg@10"],
        "recall@10": ranked["recall@10"],
    }


def evaluate_ranking(config: AppConfig, progress: bool = False) -> dict[str, dict[str, float]]:
    """Train Wide&Deep, DIN and LightGBM on the nested split's candidates, exactly as `train ranking`
    does, and compare them on the held-out window's candidates from the current recall artifact, beside
    the recall order alone."""
    store = ArtifactStore(config.artifacts_dir)
    data_fp = Dataset.fingerprint_of(dataset_path(config))
    recall_ref = _require_current_recall(store, config, data_fp)
    prep = prepare(config)
    training = ranking_training_examples(config, prep, recall_ref)
    test = labelled_candidates(
        config,
        prep,
        prep.split,
        TwoTowerModel.load(recall_ref.path),
        CooccurrenceRules.load(recall_ref.path),
        _item_statistics(config, prep, prep.split.train),
        rating_features(config, prep, prep.split.train),
        als_features(config, prep, prep.split.train),
    )
    # the recall order: each request's candidates arrive sorted by two-tower score
    recall_scores = 1.0 / (1.0 + np.exp(-test.batch.dense[:, 0] / config.recall.temperature))
    report = {"recall_order": ranking_report(test, recall_scores.astype(np.float64))}
    for name in RANKERS:
        ranker, metrics = _fit_ranker(config, prep, training, progress, name)
        started = time.perf_counter()
        scores = ranker.score(test.batch)
        report[name] = ranking_report(test, scores) | {
            "train_seconds": metrics["train_seconds"],
            "score_us_per_candidate": (time.perf_counter() - started) / len(test.labels) * 1e6,
        }
    for part in report.values():
        part["users"] = float(len(test.users))
        part["candidates"] = float(len(test.labels))
    return report


# --- evaluation --------------------------------------------------------------------------------------


def evaluate_pipeline(config: AppConfig) -> dict[str, dict[str, float]]:
    """Popularity, the two-tower channel alone, all recall channels merged (in two-tower order) and the
    whole pipeline on the held-out window, side by side."""
    store = ArtifactStore(config.artifacts_dir)
    models = ServingModels.load(store)
    _check_trained_on(store.require("recall"), config)
    prep = prepare(config)
    pipeline = RecommendationPipeline(models, config)
    test = RecallTask.of(prep, prep.split, config)
    k = max(PIPELINE_KS)
    empty = np.zeros(0, dtype=np.int64)
    rankings: dict[str, dict[int, np.ndarray]] = {
        "popularity": {},
        "two_tower": {},
        "recall_channels": {},
        "pipeline": {},
    }
    pipeline_seconds = 0.0
    # each user is served as of their last training interaction, as the ranker's examples were
    last_seen = prep.split.train.groupby("user_id")["timestamp"].max()
    for user, row, history in zip(test.users.tolist(), test.rows.tolist(), test.history):
        ctx = UserContext(
            row=_user_row(prep.users, row),
            history=history[history > 0],
            seen=test.seen.get(user, empty),
            has_profile=True,
            at=float(last_seen[user]),
        )
        rankings["popularity"][user] = pipeline.popular(ctx.seen, k).items
        query = pipeline.user_embedding(ctx)
        rankings["two_tower"][user] = pipeline.two_tower(query, ctx.seen, k).items
        merged = pipeline.channels(ctx, query)
        order, _, _ = two_tower_order(merged.items, models.index.embeddings, query)
        rankings["recall_channels"][user] = merged.items[order]
        started = time.perf_counter()
        rankings["pipeline"][user] = pipeline.recommend(ctx, k, empty).items
        pipeline_seconds += time.perf_counter() - started
    report = {
        name: evaluate_rankings(r, test.positives, PIPELINE_KS, (10,), prep.schema.num_items - 1, COVERAGE_K)
        for name, r in rankings.items()
    }
    report["pipeline"]["mean_in_process_ms"] = pipeline_seconds / max(len(test.users), 1) * 1e3
    return report


# --- rating prediction -------------------------------------------------------------------------------


def evaluate_rating(config: AppConfig, progress: bool = False) -> dict[str, dict[str, float]]:
    """Rating RMSE on a seeded random 90/10 split of all ratings: PMF, the hybrid (SVD++ + side features)
    model and I-AutoRec, each with its L2 weight chosen on a 5% validation part of the training ratings,
    and least-squares blends of them fitted on that validation part. The test ratings are touched once,
    to report."""
    seed_everything(config.seed)
    prep = prepare(config)
    schema = prep.schema
    data = RatingData.of_interactions(schema, prep.dataset.interactions)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(data.ratings))
    test_rows, rest = order[: len(order) // 10], order[len(order) // 10 :]
    val_rows, train_rows = rest[: len(rest) // 20], rest[len(rest) // 20 :]
    train, validation, test = data.take(train_rows), data.take(val_rows), data.take(test_rows)
    feedback = ImplicitFeedback(train, schema.num_users)
    side = {name: getattr(prep.users, name) for name in USER_SIDE}
    mean = float(train.ratings.mean())

    report = {"global_mean": {"rmse": rmse(np.full(len(test.ratings), mean), test.ratings)}}
    on_validation, on_test = {}, {}
    with _compute_threads(config.ranking.threads):
        for kind, (grid, settings) in RATING_MODELS.items():
            best = None
            for l2 in grid:
                torch.manual_seed(config.seed)
                started = time.perf_counter()
                model, metrics = train_rating_model(
                    build_rating_model(kind, schema, prep.items, train),
                    train,
                    validation,
                    side,
                    feedback,
                    replace(settings, l2=l2),
                    config.seed,
                )
                metrics |= {"l2": l2, "train_seconds": time.perf_counter() - started}
                logger.info("rating %s l2=%s: %s", kind, l2, metrics)
                if best is None or metrics["validation_rmse"] < best[1]["validation_rmse"]:
                    best = (model, metrics)
            model, metrics = best
            on_validation[kind] = predict(model, validation, side, feedback)
            on_test[kind] = predict(model, test, side, feedback)
            report[kind] = {"rmse": rmse(on_test[kind], test.ratings)} | metrics
    # the models err differently; the blends are fitted on validation only
    for name, members in (("blend_factor_models", ("hybrid", "pmf")), ("blend", tuple(RATING_MODELS))):
        blend = RatingBlend.fit({m: on_validation[m] for m in members}, validation.ratings)
        report[name] = {
            "rmse": rmse(blend.predict(on_test), test.ratings),
            "validation_rmse": rmse(blend.predict(on_validation), validation.ratings),
            "intercept": blend.intercept,
        } | {f"weight_{m}": w for m, w in zip(blend.names, blend.weights, strict=True)}
    for part in report.values():
        part |= {"train_ratings": float(len(train.ratings)), "test_ratings": float(len(test.ratings))}
    return report
