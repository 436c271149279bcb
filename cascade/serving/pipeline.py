"""The request-time composition of recall channels, ranking and rerank, shared by the server and the
offline evaluation."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from cascade.config import AppConfig
from cascade.core.schema import POPULAR, TWO_TOWER
from cascade.ranking.features import UserRow, encode_channels
from cascade.recall.channels import (
    ChannelCandidates,
    MergedCandidates,
    keep_unblocked,
    merge_channels,
    two_tower_order,
)
from cascade.rerank.rules import Reranker
from cascade.serving.models import ServingModels


@dataclass(frozen=True)
class UserContext:
    """A user as the pipeline sees them; item arrays hold item indices (0 never appears)."""

    row: UserRow
    history: np.ndarray  # (H,) most recent first
    seen: np.ndarray  # (S,)
    has_profile: bool  # demographics known, from the feature store or the request
    at: float | None = None  # unix time the request is answered as of; None = now

    @property
    def anonymous(self) -> bool:
        """Nothing personal to go on: popularity is the best guess."""
        return self.row.user == 0 and not self.has_profile and len(self.history) == 0


@dataclass
class Recommendation:
    items: np.ndarray  # (k,) item indices, best first
    scores: np.ndarray  # (k,) final scores
    channels: list[str]  # (k,) recall channel of each item
    channel_scores: np.ndarray  # (k,) each item's score within its channel
    stage_ms: dict[str, float] = field(default_factory=dict)


class RecommendationPipeline:
    def __init__(self, models: ServingModels, config: AppConfig):
        self.models = models
        self.config = config
        self.reranker = Reranker(config.rerank)

    def warm_up(self) -> float:
        """Answer one request for an unknown user whose history is the most popular items, before any real
        request arrives: lazily built tables (the item statistics' recent counts: ~0.1 s at 1M items),
        the kernels oneDNN compiles on first use and the first touch of the models' pages are paid here,
        not by a caller. Returns the seconds it took."""
        started = time.perf_counter()
        length = self.models.history_length
        ctx = UserContext(
            row=UserRow(user=0, gender=0, age=0, occupation=0),
            history=self.models.popular_order[:length],
            seen=np.zeros(0, dtype=np.int64),
            has_profile=False,
        )
        self.recommend(ctx, k=min(10, self.config.serving.max_k), exclude=np.zeros(0, dtype=np.int64))
        return time.perf_counter() - started

    def user_embedding(self, ctx: UserContext) -> np.ndarray:
        """(D,) float32 query vector from the user's features and recent history."""
        row = ctx.row
        recent = ctx.history[: self.models.history_length]
        return self.models.user_query(row.user, row.gender, row.age, row.occupation, row.zip, recent)

    def popular(self, blocked: np.ndarray, count: int) -> ChannelCandidates:
        """The ``count`` most popular items not in ``blocked``, scored relative to the most popular."""
        pool = self.models.popular_order[: count + len(blocked)]
        pool = pool[keep_unblocked(pool, blocked, count)]
        pop = self.models.popularity[pool]
        return ChannelCandidates(pool, (pop / max(pop.max(initial=0.0), 1.0)).astype(np.float32), POPULAR)

    def two_tower(self, query: np.ndarray, blocked: np.ndarray, count: int) -> ChannelCandidates:
        """Up to ``count`` nearest items to ``query`` (D,) from the ANN index, ``blocked`` removed."""
        scores, items = self.models.index.search(query[None, :], count + len(blocked))
        return ChannelCandidates.top(items[0], scores[0], blocked, count, TWO_TOWER)

    def recall(self, ctx: UserContext, extra: int = 0) -> tuple[MergedCandidates, np.ndarray | None]:
        """Every channel's candidates for the user, merged and de-duplicated, and the two-tower query
        (None for anonymous users, who get popular items only). ``extra`` widens the two-tower quota."""
        if ctx.anonymous:
            return merge_channels([self.popular(ctx.seen, self.models.num_candidates + extra)]), None
        query = self.user_embedding(ctx)
        return self.channels(ctx, query, extra), query

    def channels(self, ctx: UserContext, query: np.ndarray, extra: int = 0) -> MergedCandidates:
        """The personal channels for a user with two-tower ``query`` (D,): the ANN, plus co-occurrence
        from recent items, or popular-in-segment for a user with no history."""
        two_tower = self.two_tower(query, ctx.seen, self.models.num_candidates + extra)
        return self.models.channels.merge(two_tower, ctx.history, ctx.seen, ctx.row.gender, ctx.row.age)

    def recommend(self, ctx: UserContext, k: int, exclude: np.ndarray) -> Recommendation:
        """Excluded items are removed after ranking, from a candidate list widened by their number, so
        excluding an item never changes the features, and so the scores, of the others."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        merged, query = self.recall(ctx, extra=len(exclude))
        after_recall = time.perf_counter()
        timings["recall"] = (after_recall - start) * 1e3
        items, channels, channel_scores = merged.items, merged.channels, merged.channel_scores
        features_built = after_recall
        if query is None or len(items) == 0:
            scores = channel_scores
        else:
            order, tt_scores, vectors = two_tower_order(items, self.models.index.embeddings, query)
            items, channels, channel_scores = items[order], channels[order], channel_scores[order]
            codes = encode_channels(merged.channel_names)[channels]
            batch = self.models.ranking_features.build(
                ctx.row, ctx.history, items, tt_scores, codes, ctx.at, vectors
            )
            features_built = time.perf_counter()
            scores = self.models.score(batch)
        after_ranking = time.perf_counter()
        timings["ranking_features"] = (features_built - after_recall) * 1e3
        timings["ranking"] = (after_ranking - features_built) * 1e3
        result = self.reranker.apply(items, scores, ctx.seen, exclude, k)
        timings["rerank"] = (time.perf_counter() - after_ranking) * 1e3
        return Recommendation(
            result.items,
            result.scores,
            [merged.channel_names[c] for c in channels[result.positions].tolist()],
            channel_scores[result.positions],
            timings,
        )

    def similar_items(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k items nearest to item index ``item`` in the two-tower space, from the same ANN index."""
        return self.models.index.similar(item, k)
