"""The request-time composition of recall, ranking and rerank, shared by the server and the evaluation."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from cascade.config import AppConfig
from ranking.features import UserRow
from rerank.rules import Reranker
from services.models import ServingModels

SOURCE_TWO_TOWER = "two_tower"
SOURCE_POPULAR = "popular"


@dataclass(frozen=True)
class UserContext:
    """A user as the pipeline sees them; item arrays hold item indices (0 never appears)."""

    row: UserRow
    history: np.ndarray  # (H,) most recent first
    seen: np.ndarray  # (S,)
    has_profile: bool  # demographics known, from the feature store or the request


@dataclass
class Recommendation:
    items: np.ndarray  # (k,) item indices, best first
    scores: np.ndarray  # (k,)
    sources: list[str]
    stage_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidates:
    items: np.ndarray  # (C,)
    scores: np.ndarray  # (C,)
    source: str


class RecommendationPipeline:
    def __init__(self, models: ServingModels, config: AppConfig):
        self.models = models
        self.config = config
        self.reranker = Reranker(config.rerank)

    def _user_embedding(self, row: UserRow) -> np.ndarray:
        tensors = [
            torch.tensor([v], dtype=torch.int64) for v in (row.user, row.gender, row.age, row.occupation)
        ]
        with torch.inference_mode():
            return self.models.two_tower.user_tower(*tensors).numpy()  # (1, D)

    def popular(self, blocked: np.ndarray, count: int) -> Candidates:
        """The ``count`` most popular items not in ``blocked``, scored relative to the most popular."""
        pool = self.models.popular_order[: count + len(blocked)]
        pool = pool[~np.isin(pool, blocked)][:count]
        pop = self.models.popularity[pool]
        return Candidates(pool, (pop / max(pop.max(initial=0.0), 1.0)).astype(np.float32), SOURCE_POPULAR)

    def recall(self, ctx: UserContext, count: int) -> Candidates:
        """Up to ``count`` candidates the user has not seen, best first."""
        if ctx.row.user == 0 and not ctx.has_profile:
            # Nothing personal to embed: the most popular items are the best guess.
            return self.popular(ctx.seen, count)
        scores, items = self.models.index.search(self._user_embedding(ctx.row), count + len(ctx.seen))
        scores, items = scores[0], items[0]
        keep = (items > 0) & ~np.isin(items, ctx.seen)
        return Candidates(items[keep][:count], scores[keep][:count], SOURCE_TWO_TOWER)

    def recommend(self, ctx: UserContext, k: int, exclude: np.ndarray) -> Recommendation:
        """Excluded items are removed after ranking, from a candidate list widened by their number, so
        excluding an item never changes the features, and so the scores, of the others."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        candidates = self.recall(ctx, self.config.recall.num_candidates + len(exclude))
        after_recall = time.perf_counter()
        timings["recall"] = (after_recall - start) * 1e3
        if candidates.source == SOURCE_POPULAR or len(candidates.items) == 0:
            scores = candidates.scores
        else:
            batch = self.models.ranking_features.build(
                ctx.row, ctx.history, candidates.items, candidates.scores
            )
            scores = self.models.ranker.score(batch)
        after_ranking = time.perf_counter()
        timings["ranking"] = (after_ranking - after_recall) * 1e3
        result = self.reranker.apply(candidates.items, scores, ctx.seen, exclude, k)
        timings["rerank"] = (time.perf_counter() - after_ranking) * 1e3
        return Recommendation(result.items, result.scores, [candidates.source] * len(result.items), timings)
