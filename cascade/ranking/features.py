"""Ranking features for (user, candidate) pairs, built the same way for training and serving.

A RankingBatch keeps the user side once per request and the candidate side once per candidate, so models
compute the user side (embeddings, behaviour projections) once per request rather than once per pair.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
import torch

from cascade.core.schema import RECALL_CHANNELS, FeatureSchema, ItemFeatures, UserFeatures
from cascade.core.sparse import PairRules
from cascade.ranking.statistics import ItemStatistics

# Bumped whenever a feature's meaning changes, so that rankers trained on the old meaning are retrained
# rather than served.
FEATURES_VERSION = 9

# Recall scores are not comparable across users (each user's query vector differs), so the request-relative
# position and gap to the best candidate carry the recall order into ranking.
DENSE_FEATURES = (
    "recall_score",
    "recall_score_gap",
    "recall_rank",
    "log_popularity",
    "log_recent_popularity",
    "log_item_age_days",
    "item_mean_rating",
    "item_positive_rate",
    "genre_affinity",
    "log_history_length",
    "history_mean_log_popularity",
    # the candidate against the behaviour sequence in the two-tower item space (cosine: the vectors are
    # L2-normalised): the latest item, the best of the latest 10, the mean of the latest 5 and of all
    "similarity_to_latest",
    "max_similarity_latest_10",
    "mean_similarity_latest_5",
    "mean_similarity_history",
    # co-occurrence rules history item -> candidate: confidence summed over the latest 10 and over the
    # whole sequence, summed with weight 0.9^position, the strongest, and log(1 + support) over the latest 10
    "cooccurrence_latest_10",
    "cooccurrence_history",
    "cooccurrence_decayed",
    "cooccurrence_max",
    "cooccurrence_log_support_latest_10",
    # the item-item (EASE) model's score of the candidate from the behaviour sequence, and its rank among
    # the request's candidates; 0 where the catalogue is too large for that model
    "item_item_score",
    "item_item_rank",
    # the user's customer value C (RFM, 1-5) over 5, 0 when unknown: as of the training window's end in
    # training, as served (the batch's, moved by the user's activity since) at request time
    "user_value",
)
# then one predicted rating per configured rating model (RankingConfig.rating_models), named by
# dense_feature_names
RATING_FEATURE_PREFIX = "predicted_rating_"
# how much each older behaviour counts in cooccurrence_decayed, as the co-occurrence channel weighs it
COOCCURRENCE_DECAY = 0.9

# Recall channels as a categorical feature; code 0 is an unknown channel.
_CHANNEL_CODES = {name: code for code, name in enumerate(RECALL_CHANNELS, start=1)}

REQUEST_FIELDS = ("user", "gender", "age", "occupation", "zip", "history")
CANDIDATE_FIELDS = ("request", "item", "genres", "year", "channel", "dense")


ALS_FEATURES = ("als_score", "als_rank")


def dense_feature_names(rating_models: tuple[str, ...] | list[str], als: bool = False) -> tuple[str, ...]:
    """The columns of RankingBatch.dense when the given rating models supply predicted ratings and, with
    ``als``, an implicit ALS model its preference score and rank."""
    ratings = tuple(RATING_FEATURE_PREFIX + kind for kind in rating_models)
    return DENSE_FEATURES + ratings + (ALS_FEATURES if als else ())


def encode_channels(channels) -> np.ndarray:
    """Channel names (C,) -> codes (C,) int64 (0 for an unknown name)."""
    channels = np.asarray(channels, dtype=object)
    codes = np.zeros(len(channels), dtype=np.int64)
    for name, code in _CHANNEL_CODES.items():  # a few vectorised comparisons, not a Python loop over C
        codes[channels == name] = code
    return codes


class ItemRelations(Protocol):
    """Directed item -> item association strengths (recall's co-occurrence rules provide them)."""

    def pair_rules(self, sources: np.ndarray, targets: np.ndarray) -> PairRules:
        """sources (H,), targets (C,) distinct item indices -> the associations source -> target found."""
        ...


class ItemItemScorer(Protocol):
    """An item-item model over item indices (recall's EASE channel provides one)."""

    def scores(self, seen: np.ndarray) -> np.ndarray:
        """Every item's score (N,) for a user who has the items ``seen`` (S,)."""
        ...


class CandidateScorer(Protocol):
    """A feature model scoring a request's candidates into ``kinds`` dense columns: the rating models
    (ranking.rating_features) and the ALS preferences (ranking.als_features)."""

    kinds: tuple[str, ...]

    def predict(self, user: UserRow, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """history (H,) latest first, candidates (C,) item indices -> (C, len(kinds)) float32."""
        ...


@dataclass(frozen=True)
class UserRow:
    """Encoded features of the user a request is for (ints, index 0 / unknown codes allowed)."""

    user: int
    gender: int
    age: int
    occupation: int
    zip: int = 0
    value: float = 0.0  # customer value C / 5 (0: unknown); the user_value feature

    @classmethod
    def of(cls, users: UserFeatures, row: int) -> UserRow:
        """Row ``row`` of an encoded user table."""
        return cls(
            int(users.user[row]),
            int(users.gender[row]),
            int(users.age[row]),
            int(users.occupation[row]),
            int(users.zip[row]),
        )


@dataclass(frozen=True)
class RankingBatch:
    """R requests and their B candidates.

    Per request: ``user``, ``gender``, ``age``, ``occupation``, ``zip`` (R,) int64 and ``history`` (R, L)
    int64 item indices, most recent first, 0-padded. Per candidate: ``request`` (B,) int64 in [0, R),
    ``item``, ``year``, ``channel`` (B,) int64, ``genres`` (B, G) int64 0-padded, ``dense``
    (B, F) float32, F the configured dense columns (dense_feature_names). Candidates of one request are
    contiguous.
    """

    user: np.ndarray
    gender: np.ndarray
    age: np.ndarray
    occupation: np.ndarray
    zip: np.ndarray
    history: np.ndarray
    request: np.ndarray
    item: np.ndarray
    genres: np.ndarray
    year: np.ndarray
    channel: np.ndarray
    dense: np.ndarray

    def __len__(self) -> int:
        return len(self.item)

    @property
    def num_requests(self) -> int:
        return len(self.user)

    def take(self, rows: np.ndarray) -> RankingBatch:
        """The candidates at ``rows``, with only the requests they belong to (renumbered, order kept)."""
        used, request = np.unique(self.request[rows], return_inverse=True)
        parts = {name: getattr(self, name)[used] for name in REQUEST_FIELDS}
        parts |= {name: getattr(self, name)[rows] for name in CANDIDATE_FIELDS if name != "request"}
        return RankingBatch(request=request.astype(np.int64), **parts)

    def group_sizes(self) -> np.ndarray:
        """Candidates per request (R,), in request order."""
        return np.bincount(self.request, minlength=self.num_requests)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: torch.from_numpy(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def concat(cls, batches: list[RankingBatch]) -> RankingBatch:
        offsets = np.cumsum([0] + [b.num_requests for b in batches[:-1]])
        parts = {name: np.concatenate([getattr(b, name) for b in batches]) for name in REQUEST_FIELDS}
        parts |= {
            name: np.concatenate([getattr(b, name) for b in batches])
            for name in CANDIDATE_FIELDS
            if name != "request"
        }
        parts["request"] = np.concatenate([b.request + o for b, o in zip(batches, offsets)])
        return cls(**parts)


class RankingFeatureBuilder:
    """Turns a user, their behaviour history and recall candidates into a one-request RankingBatch.

    ``statistics``, ``item_vectors`` (N, D), the two-tower item embeddings of item indices 1..N, and
    ``relations`` must come from the same training window as the candidates' recall model (see
    ItemStatistics), so no feature peeks at the evaluation window, and so must ``item_item`` and
    ``ratings``, whose predictions follow the DENSE_FEATURES columns when given, and so must
    ``preferences``, whose columns come last; ``history_length`` is the behaviour sequence the models see.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        items: ItemFeatures,
        statistics: ItemStatistics,
        history_length: int,
        item_vectors: np.ndarray,
        relations: ItemRelations,
        ratings: CandidateScorer | None = None,
        preferences: CandidateScorer | None = None,
        item_item: ItemItemScorer | None = None,
    ):
        self.schema = schema
        self.item_item = item_item
        self.ratings = ratings
        self.preferences = preferences
        self.items = items
        self.statistics = statistics
        self.history_length = history_length
        self.item_vectors = item_vectors
        self.relations = relations
        self._log_popularity_scale = np.log1p(max(statistics.counts.max(), 1.0))
        self._log_popularity = np.log1p(statistics.counts) / self._log_popularity_scale

    def item_item_columns(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The item-item model's score of each candidate from ``history`` (H,) and its rank among the
        candidates (log-scaled as the recall rank is) -> (C, 2); zeros without the model."""
        if self.item_item is None or not len(candidates):
            return np.zeros((len(candidates), 2), dtype=np.float32)
        scores = self.item_item.scores(history)[candidates]
        rank = np.empty(len(candidates), dtype=np.float32)
        rank[np.argsort(-scores, kind="stable")] = np.arange(len(candidates), dtype=np.float32)
        return np.column_stack([scores, np.log1p(rank) / 7.0]).astype(np.float32)

    def genre_share(self, history: np.ndarray) -> np.ndarray:
        """Share of each genre id among the genres of the history items -> (num_genres,), [0] = 0."""
        genres = self.items.genres[history].ravel()
        counts = np.bincount(genres[genres > 0], minlength=self.schema.num_genres).astype(np.float32)
        total = counts.sum()
        return counts / total if total > 0 else counts

    def history_similarity(
        self, history: np.ndarray, candidates: np.ndarray, candidate_vectors: np.ndarray | None = None
    ) -> np.ndarray:
        """history (H,) most recent first, candidates (C,) (their vectors (C, D) when the caller has them)
        -> (C, 4): similarity to the latest item, the max over the latest 10, the mean over the latest 5
        and over all H; zeros without a history."""
        if len(history) == 0:
            return np.zeros((len(candidates), 4), dtype=np.float32)
        if candidate_vectors is None:
            candidate_vectors = self.item_vectors[candidates - 1]
        similarity = candidate_vectors @ self.item_vectors[history - 1].T  # (C, H)
        return np.column_stack(
            [
                similarity[:, 0],
                similarity[:, :10].max(axis=1),
                similarity[:, :5].mean(axis=1),
                similarity.mean(axis=1),
            ]
        )

    def history_cooccurrence(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """history (H,) most recent first, candidates (C,) -> (C, 5), the cooccurrence_* features."""
        rules = self.relations.pair_rules(history, candidates)
        count = len(candidates)
        # served requests find ~700 rules among 50 x 500 pairs: dense reductions over an (H, C) matrix
        # beat per-rule scatters there (np.maximum.at alone cost as much as the matrix); each
        # (source, target) pair appears once, so the assignment is exact
        confidence = np.zeros((len(history), count), dtype=np.float32)
        confidence[rules.source, rules.target] = rules.confidence
        recent = rules.source < 10
        log_support = np.log1p(rules.support[recent].astype(np.float64))
        decay = COOCCURRENCE_DECAY ** np.arange(len(history), dtype=np.float32)
        columns = np.empty((count, 5), dtype=np.float64)
        columns[:, 0] = confidence[:10].sum(axis=0)
        columns[:, 1] = confidence.sum(axis=0)
        columns[:, 2] = decay @ confidence
        columns[:, 3] = confidence.max(axis=0, initial=0.0)
        columns[:, 4] = np.bincount(rules.target[recent], log_support, minlength=count)
        return columns

    def build(
        self,
        user: UserRow,
        history: np.ndarray,
        candidates: np.ndarray,
        recall_scores: np.ndarray,
        channels: np.ndarray,
        at: float | None = None,
        candidate_vectors: np.ndarray | None = None,
    ) -> RankingBatch:
        """history: item indices (H,) most recent first; candidates, recall_scores, channels (codes): (C,)
        in recall order; ``at``: unix time of the request (None = now); ``candidate_vectors``: (C, D) rows
        of ``item_vectors`` for the candidates, if already gathered -> one request with C candidates."""
        count = len(candidates)
        stats = self.statistics
        when = stats.clamp_time(at)
        candidates = np.asarray(candidates, dtype=np.int64)
        recall_scores = np.asarray(recall_scores, dtype=np.float32)
        best = recall_scores.max(initial=0.0) if count else 0.0
        genres = self.items.genres[candidates]
        history = np.asarray(history, dtype=np.int64)
        history = history[history > 0][: self.history_length]
        history_pop = self._log_popularity[history].mean() if len(history) else 0.0
        columns = [
            recall_scores,
            recall_scores - best,
            # fixed scale (log1p(1000) ~ 6.9), not the list length, so a longer list moves no one
            np.log1p(np.arange(count, dtype=np.float32)) / 7.0,
            self._log_popularity[candidates],
            np.log1p(stats.recent_counts(candidates, when)) / self._log_popularity_scale,
            np.log1p(stats.age_days(candidates, when)) / 7.0,
            stats.mean_rating(candidates),
            stats.positive_rate(candidates),
            self.genre_share(history)[genres].sum(axis=1),
            np.full(count, np.log1p(len(history)) / 7.0),
            np.full(count, history_pop),
            self.history_similarity(history, candidates, candidate_vectors),
            self.history_cooccurrence(history, candidates),
            self.item_item_columns(history, candidates),
            np.full(count, user.value, dtype=np.float32),
        ]
        # the feature models' columns, after the base ones, in the order dense_feature_names lists them
        columns += [
            model.predict(user, history, candidates)
            for model in (self.ratings, self.preferences)
            if model is not None
        ]
        dense = np.column_stack(columns).astype(np.float32)
        padded = np.zeros((1, self.history_length), dtype=np.int64)
        padded[0, : len(history)] = history
        return RankingBatch(
            user=np.array([user.user], dtype=np.int64),
            gender=np.array([user.gender], dtype=np.int64),
            age=np.array([user.age], dtype=np.int64),
            occupation=np.array([user.occupation], dtype=np.int64),
            zip=np.array([user.zip], dtype=np.int64),
            history=padded,
            request=np.zeros(count, dtype=np.int64),
            item=candidates,
            genres=genres,
            year=self.items.year[candidates],
            channel=np.asarray(channels, dtype=np.int64),
            dense=dense,
        )
