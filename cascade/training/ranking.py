"""`cascade train ranking`: the configured ranker trained on labelled recall candidates of the nested split,
published with what its features are computed from at request time."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from tqdm import tqdm

from cascade.config import AppConfig
from cascade.core.artifacts import ArtifactRef, ArtifactStore, fingerprint
from cascade.core.distributed import distributed_context
from cascade.core.engines import (
    LOCAL,
    LocalEngine,
    OfflineEngine,
    PartitionedJob,
    PartResult,
    aligned_parts,
    open_engine,
)
from cascade.core.metrics import auc
from cascade.core.schema import (
    SCHEMA_VERSION,
    TWO_TOWER,
    FeatureSchema,
    ItemFeatures,
    UserFeatures,
    native_id,
)
from cascade.core.seeding import seed_everything
from cascade.customers.profiles import user_values
from cascade.data.dataset import Dataset
from cascade.data.split import TemporalSplit
from cascade.ranking.als_features import ALSFeatures
from cascade.ranking.bundle import RANKING, RankingParts
from cascade.ranking.features import (
    CANDIDATE_FIELDS,
    FEATURES_VERSION,
    REQUEST_FIELDS,
    RankingBatch,
    RankingFeatureBuilder,
    UserRow,
    encode_channels,
)
from cascade.ranking.ranker import Ranker, dense_features_of
from cascade.ranking.rating_features import RatingFeatureModels
from cascade.ranking.registry import DATA_PARALLEL_RANKERS, create_ranker
from cascade.ranking.statistics import ItemStatistics
from cascade.recall.bundle import RECALL, RecallBundle
from cascade.recall.channels import ChannelCandidates, RecallChannels, two_tower_order
from cascade.recall.two_tower import TwoTowerModel
from cascade.training.guard import scan_if_stale
from cascade.training.prepare import Prepared, compute_threads, prepare, reuse_current
from cascade.training.recall import count_segments, recall_fingerprint
from cascade.training.task import RecallTask

logger = logging.getLogger(__name__)

# Users whose candidates one exact search finds. A search is widened by its users' longest seen list, and
# among items of equal score which ones fill the last places depends on how far it is widened; so the
# engines' parts are runs of whole searches, and each user is searched with the same others on any engine.
SEARCH_CHUNK = 256


def item_statistics(
    config: AppConfig, prep: Prepared, interactions: pd.DataFrame, engine: OfflineEngine = LOCAL
) -> ItemStatistics:
    return ItemStatistics.from_interactions(
        prep.schema, interactions, config.data.positive_min_rating, config.ranking.recent_window_days, engine
    )


def rating_features(
    config: AppConfig, prep: Prepared, interactions: pd.DataFrame, progress: bool = False
) -> RatingFeatureModels | None:
    """The configured rating models trained on ``interactions``' ratings; None when none are configured."""
    if not config.ranking.rating_models:
        return None
    with compute_threads(config.ranking.threads):
        return RatingFeatureModels.fit(
            config.ranking.rating_models,
            prep.schema,
            prep.users,
            prep.items,
            interactions,
            config.seed,
            progress,
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


@dataclass(frozen=True)
class CandidateSources:
    """What one split's candidates and their features come from, all fitted on that split's training
    part only, so no feature sees its held-out window."""

    model: TwoTowerModel
    channels: RecallChannels
    statistics: ItemStatistics
    ratings: RatingFeatureModels | None
    preferences: ALSFeatures | None


def labelled_candidates(
    config: AppConfig,
    prep: Prepared,
    split: TemporalSplit,
    sources: CandidateSources,
    max_users: int | None = None,
    progress: bool = False,
    engine: OfflineEngine = LOCAL,
    search_chunk: int = SEARCH_CHUNK,
) -> RankingExamples:
    """For each user with held-out positives in ``split``: the candidates of every channel, merged by the
    same ``RecallChannels.merge`` serving calls (the two-tower channel by exact search), featurised as of the
    user's last training interaction, labelled 1 when among the user's held-out positives.
    ``max_users``: a seeded sample of the users, all when None. ``engine`` labels parts of the users where
    it runs jobs, each part runs of ``search_chunk`` users searched together; the parts' examples, in the
    users' order, are the whole's."""
    task = RecallTask.of(prep, split, config, max_users=max_users)
    item_embeddings, queries = task.embed(sources.model, prep, engine)
    job = _LabelCandidates(
        prep.schema,
        prep.users,
        prep.items,
        task.of_own_users(),
        item_embeddings,
        queries,
        sources,
        candidates=config.ranking.training_candidates,
        history_length=config.features.history_length,
        last_seen=split.train.groupby("user_id")["timestamp"].max(),
        values=user_values(split.train, config.customers),  # as of the training window's end
        progress=progress and engine.name == "local",
        search_chunk=search_chunk,
    )
    parts = [
        pd.DataFrame({"position": np.arange(users.start, users.stop)})
        for users in aligned_parts(len(task.users), engine.partitions, search_chunk)
    ]
    results = [r for r in engine.map_parts(job, parts) if len(r["labels"])]
    fields = REQUEST_FIELDS + CANDIDATE_FIELDS
    empty = np.zeros(0)
    return RankingExamples(
        RankingBatch.concat([RankingBatch(**{name: r[name] for name in fields}) for r in results]),
        np.concatenate([r["labels"] for r in results]) if results else empty.astype(np.float32),
        np.concatenate([r["users"] for r in results]) if results else empty,
        task.positives,
    )


class _LabelCandidates(PartitionedJob):
    """Positions (P,) into a task's users -> their labelled candidates: the RankingBatch's fields, labels
    (B,) and the users (R,) that had candidates, in the positions' order."""

    name = "ranking examples"

    def __init__(
        self,
        schema: FeatureSchema,
        users: UserFeatures,
        items: ItemFeatures,
        task: RecallTask,
        item_embeddings: np.ndarray,
        queries: np.ndarray,
        sources: CandidateSources,
        *,
        candidates: int,
        history_length: int,
        last_seen: pd.Series,
        values: dict,
        progress: bool,
        search_chunk: int,
    ):
        self.schema, self.users, self.items, self.task = schema, users, items, task
        self.item_embeddings, self.queries, self.sources = item_embeddings, queries, sources
        self.candidates, self.history_length = candidates, history_length
        self.last_seen, self.values, self.progress = last_seen, values, progress
        self.search_chunk = search_chunk

    def run_part(self, part: dict[str, np.ndarray]) -> PartResult:
        task, sources = self.task, self.sources
        positions = part["position"]
        candidates = task.rankings(
            self.item_embeddings, self.queries, self.candidates, self.search_chunk, positions=positions
        )
        builder = RankingFeatureBuilder(
            self.schema,
            self.items,
            sources.statistics,
            self.history_length,
            item_vectors=self.item_embeddings,
            relations=sources.channels.cooccurrence,
            ratings=sources.ratings,
            preferences=sources.preferences,
            item_item=sources.channels.item_item,
        )
        batches, labels, users = [], [], []
        empty = np.zeros(0, dtype=np.int64)
        for i in tqdm(
            positions.tolist(),
            desc="ranking: labelled candidates",
            unit="user",
            disable=not self.progress,
            leave=False,
        ):
            user, row = native_id(task.users[i]), int(task.rows[i])
            two_tower, tt_scores = candidates[user]
            seen = task.seen.get(user, empty)
            history = task.history[i][task.history[i] > 0]
            user_row = replace(UserRow.of(self.users, row), value=self.values.get(user, 0.0))
            merged = sources.channels.merge(
                ChannelCandidates(two_tower, tt_scores, TWO_TOWER),
                history,
                seen,
                user_row.gender,
                user_row.age,
            )
            if len(merged) == 0:
                continue
            order, scores, vectors = two_tower_order(merged.items, self.item_embeddings, self.queries[i])
            cand = merged.items[order]
            at = float(self.last_seen.get(user, sources.statistics.end))
            batches.append(
                builder.build(
                    user_row,
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
        fields = REQUEST_FIELDS + CANDIDATE_FIELDS
        if not batches:
            return {name: np.zeros(0) for name in fields} | {"labels": np.zeros(0), "users": np.zeros(0)}
        batch = RankingBatch.concat(batches)
        return {name: getattr(batch, name) for name in fields} | {
            "labels": np.concatenate(labels),
            "users": np.array(users),
        }


def ranking_training_examples(
    config: AppConfig,
    prep: Prepared,
    recall: RecallBundle,
    progress: bool = False,
    engine: OfflineEngine = LOCAL,
) -> RankingExamples:
    """Labelled candidates of the nested split, from the recall artifact's validation model and rules, and
    segment counts, item statistics and rating models, all fitted on the inner training part only."""
    inner, sources = inner_candidate_sources(config, prep, recall, progress, engine)
    return labelled_candidates(
        config, prep, inner, sources, config.ranking.max_training_users, progress, engine
    )


def inner_candidate_sources(
    config: AppConfig,
    prep: Prepared,
    recall: RecallBundle,
    progress: bool = False,
    engine: OfflineEngine = LOCAL,
) -> tuple[TemporalSplit, CandidateSources]:
    """The nested split and what its training examples' candidates and features come from."""
    inner = prep.inner_split(config.data.holdout_fraction)
    sources = CandidateSources(
        model=recall.inner_two_tower(),
        channels=RecallChannels(
            recall.inner_cooccurrence(),
            count_segments(config, prep, prep.sequences(inner.train)),
            config.recall,
            recall.inner_item_item(),
        ),
        statistics=item_statistics(config, prep, inner.train, engine),
        ratings=rating_features(config, prep, inner.train, progress),
        preferences=als_features(config, prep, inner.train),
    )
    return inner, sources


def ranking_fingerprint(config: AppConfig, data_fp: str, recall_version: str) -> str:
    """Keyed on the recall version it learns from, not only on the recall's fingerprint: a recall
    retrained with ``--force`` has the same fingerprint but other candidates and scores."""
    return fingerprint(
        "ranking",
        recall_fingerprint(config, data_fp),
        recall_version,
        config.ranking.model_dump(mode="json"),
        config.features.history_length,
        dense_features_of(config.ranking),
        FEATURES_VERSION,
    )


def require_data_parallel_ranker(config: AppConfig) -> None:
    """Raise ValueError unless the configured ranker trains data-parallel (``--nproc``)."""
    if config.ranking.type not in DATA_PARALLEL_RANKERS:
        raise ValueError(
            f"ranking.model.type {config.ranking.type!r} does not train data-parallel; "
            f"--nproc is for {', '.join(DATA_PARALLEL_RANKERS)}"
        )


def require_current_recall(store: ArtifactStore, config: AppConfig, data_fp: str) -> RecallBundle:
    recall_ref = store.require(RECALL)
    if recall_ref.fingerprint != recall_fingerprint(config, data_fp):
        raise RuntimeError(
            f"the current recall artifact {recall_ref.version} was not trained with this config and data; "
            "run `cascade train recall` first"
        )
    return RecallBundle(recall_ref, config.pseudonyms())


def fit_ranker(
    config: AppConfig, prep: Prepared, examples: RankingExamples, progress: bool, ranking_type: str
) -> tuple[Ranker, dict[str, float]]:
    """A ``ranking_type`` ranker fitted on ``examples`` (a share of the users held out to pick its epoch or
    rounds) and its training metrics."""
    fit_part, val_part = examples.split_users(config.ranking.validation_share, config.seed)
    seed_everything(config.seed)
    ranker = create_ranker(config.ranking.with_ranker(ranking_type), prep.schema, prep.items)
    started = time.perf_counter()
    with compute_threads(config.ranking.threads):
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


def train_ranking(config: AppConfig, force: bool = False, progress: bool = True) -> ArtifactRef | None:
    """Train the configured ranker on labelled recall candidates of the nested split and publish it with
    the item statistics serving computes its features from (over the whole training part).

    In a process group of several (``cascade train ranking --nproc N``) every process builds the same
    examples and trains its share of each epoch's batches of the neural ranker; the first one publishes and
    the others return None."""
    processes, rank = distributed_context()
    if processes > 1:
        require_data_parallel_ranker(config)
    scan_if_stale(config)  # the guard's exclusions first: they change the data set's fingerprint
    store = config.artifact_store()
    data_fp = Dataset.fingerprint_of(config.data.path)
    recall = require_current_recall(store, config, data_fp)
    wanted = ranking_fingerprint(config, data_fp, recall.version)
    if (ref := reuse_current(store, RANKING, wanted, force)) is not None:
        return ref
    seed_everything(config.seed)
    prep = prepare(config)
    # data-parallel processes each build the examples in-process: one Ray per process would fight over CPUs
    with open_engine(config.offline) if processes == 1 else LocalEngine() as engine:
        examples = ranking_training_examples(config, prep, recall, progress, engine)
        statistics = item_statistics(config, prep, prep.split.train, engine)
    ranker, metrics = fit_ranker(config, prep, examples, progress, config.ranking.type)
    if rank != 0:
        return None
    metrics["examples"] = float(len(examples.labels))
    metrics["positive_rate"] = float(examples.labels.mean())
    logger.info("ranker %s: %s", config.ranking.type, {k: round(v, 4) for k, v in metrics.items()})
    parts = RankingParts(
        ranker=ranker,
        statistics=statistics,
        ratings=rating_features(config, prep, prep.split.train, progress),
        preferences=als_features(config, prep, prep.split.train),
    )
    if parts.ratings is not None:
        metrics |= {f"rating_{k}": v for k, v in parts.ratings.metrics.items()}
    if parts.preferences is not None:
        metrics |= parts.preferences.metrics
    return store.publish(
        RANKING,
        parts.write,
        fingerprint=wanted,
        config=config.model_dump(mode="json"),
        schema_version=SCHEMA_VERSION,
        metrics=metrics,
        parents={RECALL: recall.version},
        extra={"dataset": {"name": prep.dataset.name, "fingerprint": data_fp}, "ranker": config.ranking.type},
    )
