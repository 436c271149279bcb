"""The request-time composition of recall channels, ranking and rerank, shared by the server and the
offline evaluation."""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Mapping
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
from cascade.rerank.engine import RerankResult, RuleEngine
from cascade.rerank.request import RerankRequest
from cascade.rerank.rules_file import PinRule, RulesFile, UserTraits
from cascade.serving.models import ServingModels


@dataclass(frozen=True)
class UserContext:
    """A user as the pipeline sees them; item arrays hold item indices (0 never appears)."""

    row: UserRow
    history: np.ndarray  # (H,) most recent first
    seen: np.ndarray  # (S,)
    has_profile: bool  # demographics known, from the feature store or the request
    at: float | None = None  # unix time the request is answered as of; None = now
    # what rule segments test (None: a returning user, or a new one when the history is empty, of unknown
    # demographics), and the recent events with their types and times, (H, 3) rows (item index, event
    # type, unix time), most recent first, for the seen rules
    traits: UserTraits | None = None
    events: np.ndarray | None = None

    @property
    def anonymous(self) -> bool:
        """Nothing personal to go on: popularity is the best guess."""
        return self.row.user == 0 and not self.has_profile and len(self.history) == 0


class Plan(enum.Enum):
    """How much of the pipeline a request can afford, from all of it to none of the models."""

    FULL = "full"  # every channel's candidates, ranked
    REDUCED = "reduced"  # a quarter of the two-tower candidates, no other channel, ranked
    RECALL_ORDER = "recall_order"  # the reduced two-tower candidates in their recall order, no ranking
    POPULAR = "popular"  # popular items the user has not seen: no model runs


# REDUCED's share of the two-tower quota; the ranking stage's time is about proportional to its candidates
REDUCED_SHARE = 0.25
# a request that keeps only some genres adds num_candidates / this many popular items of them
GENRE_CANDIDATE_SHARE = 4


class StageCosts:
    """Running averages of what full requests cost (milliseconds), and the plan they say a request with a
    given time left can afford. Updated by every full request, so the estimate follows the machine."""

    def __init__(self, smoothing: float = 0.05, safety: float = 2.0):
        """``safety``: how many times the average a plan must fit in, to cover requests slower than the
        average (a p95 is often about twice the mean here)."""
        self.smoothing, self.safety = smoothing, safety
        self.recall_ms: float | None = None
        self.rank_ms: float | None = None
        self._lock = threading.Lock()

    def observe(self, recall_ms: float, rank_ms: float) -> None:
        with self._lock:
            if self.recall_ms is None or self.rank_ms is None:
                self.recall_ms, self.rank_ms = recall_ms, rank_ms
            else:
                a = self.smoothing
                self.recall_ms += a * (recall_ms - self.recall_ms)
                self.rank_ms += a * (rank_ms - self.rank_ms)

    def plan(self, remaining_ms: float) -> Plan:
        recall, rank = self.recall_ms, self.rank_ms
        if recall is None or rank is None or remaining_ms == float("inf"):
            return Plan.FULL
        budget = remaining_ms / self.safety
        if recall + rank <= budget:
            return Plan.FULL
        if recall + rank * REDUCED_SHARE <= budget:
            return Plan.REDUCED
        if recall <= budget:
            return Plan.RECALL_ORDER
        return Plan.POPULAR


@dataclass
class Recommendation:
    items: np.ndarray  # (k,) item indices, best first
    scores: np.ndarray  # (k,) final scores
    channels: list[str]  # (k,) recall channel of each item
    channel_scores: np.ndarray  # (k,) each item's score within its channel
    stage_ms: dict[str, float] = field(default_factory=dict)
    plan: Plan = Plan.FULL
    # with explain: the ranker's score (NaN: a pinned item), the rules that fired on each item, and how
    # many candidates each rule removed
    ranker_scores: np.ndarray | None = None
    fired: list[list[str]] | None = None
    removed: dict[str, int] = field(default_factory=dict)
    # (k,) the probability the rules put each item at its position (below 1 only for exploration's draws),
    # and the impression-capped pins shown, whose impressions the caller counts
    propensities: np.ndarray | None = None
    shown_pins: tuple[PinRule, ...] = ()

    @classmethod
    def empty(cls) -> Recommendation:
        none = np.zeros(0, dtype=np.int64)
        return cls(none, np.zeros(0, dtype=np.float32), [], np.zeros(0, dtype=np.float32))


PINNED = "pin"  # the channel reported for an item a pin rule added
_IN_FORCE = object()  # RecommendationPipeline._compile: the rules in force


@dataclass(frozen=True)
class Ranked:
    """The ranked candidates of one request: items (C,), each one's channel as a position into
    ``merged.channel_names`` (C,), its channel score (C,) and its ranker score (C,); milliseconds per
    stage."""

    merged: MergedCandidates
    items: np.ndarray
    channels: np.ndarray
    channel_scores: np.ndarray
    scores: np.ndarray
    stage_ms: dict[str, float]


@dataclass(frozen=True)
class RecommendOptions:
    """What a request asks of the rules beyond its user: the surface it is shown on, genres to keep
    (include) or drop (exclude) as genre ids, the exploration seed, pin impressions so far (pin name ->
    count), and the positions earlier pages served (``offset``)."""

    surface: str = ""
    include_genres: tuple[int, ...] = ()
    exclude_genres: tuple[int, ...] = ()
    seed: int = 0
    impressions: Mapping[str, int] = field(default_factory=dict)
    offset: int = 0

    def request(
        self,
        seen: np.ndarray,
        exclude: np.ndarray,
        at: float,
        user: UserTraits | None = None,
        history: np.ndarray | None = None,
    ) -> RerankRequest:
        """These options with what the rules know of the user, as one request to the rules engine."""
        return RerankRequest(
            seen=seen,
            exclude=exclude,
            at=at,
            surface=self.surface,
            user=user if user is not None else UserTraits(),
            history=history,
            include_genres=self.include_genres,
            exclude_genres=self.exclude_genres,
            seed=self.seed,
            impressions=self.impressions,
            offset=self.offset,
        )


class RecommendationPipeline:
    def __init__(self, models: ServingModels, config: AppConfig, rules: RulesFile | None = None):
        """``rules``: the rules file, compiled against these models' catalogue (ConfigError when it names a
        genre or pinned item the catalogue lacks)."""
        self.models = models
        self.config = config
        self.deleted: np.ndarray | None = None  # (N,) bool: the catalogue's deleted items
        self._compiling = threading.Lock()  # a rules reload and a deletion at once: neither is lost
        self.rules_file: RulesFile | None = None
        self.rules = self.use_rules(rules)
        self.costs = StageCosts()
        # genre id -> its items, most popular first: built at a request's first use of the genre
        self._genre_popular: dict[int, np.ndarray] = {}

    def use_rules(self, rules: RulesFile | None) -> RuleEngine:
        """Compile ``rules`` against the served catalogue and swap them in (a single assignment: a request
        applies either the old rules or the new ones); raises ConfigError and keeps the old ones when
        they do not compile."""
        return self._compile(rules=rules)

    def _compile(
        self, rules: RulesFile | object | None = _IN_FORCE, deleted: np.ndarray | None = None
    ) -> RuleEngine:
        """Compile ``rules`` (default: those in force) with ``deleted`` (default: the deletions in force) and
        swap the engine in with both, under one lock: a rules reload and a deletion at once lose neither."""
        with self._compiling:
            deleted = self.deleted if deleted is None else deleted
            rules = self.rules_file if rules is _IN_FORCE else rules
            engine = RuleEngine(self.config.rerank, self.models.attributes, rules, deleted)  # type: ignore[arg-type]
            self.rules, self.rules_file, self.deleted = engine, rules, deleted
        return engine

    def use_deleted(self, item_ids: tuple[str, ...]) -> int:
        """Never serve these items (ids as text; ones the catalogue lacks are ignored) from now on: the
        rules recompiled with them, swapped in one assignment. Returns how many the catalogue holds."""
        schema = self.models.schema
        indices = schema.item_index(list(item_ids))
        deleted = np.zeros(schema.num_items, dtype=bool)
        deleted[indices[indices > 0]] = True
        self._compile(deleted=deleted)
        return int(deleted.sum())

    def warm_up(self) -> float:
        """Answer one request for an unknown user whose history is the most popular items, before any real
        request arrives: lazily built tables (the item statistics' recent counts: ~0.1 s at 1M items),
        the kernels oneDNN compiles on first use and the first touch of the models' pages are paid here,
        not by a caller. A few more then seed the stage costs deadline plans are made from (the first
        request's, paying all that, would overstate them). Returns the seconds it took."""
        started = time.perf_counter()
        length = self.models.history_length
        ctx = UserContext(
            row=UserRow(user=0, gender=0, age=0, occupation=0),
            history=self.models.popular_order[:length],
            seen=np.zeros(0, dtype=np.int64),
            has_profile=False,
        )
        k, exclude = min(10, self.config.serving.max_k), np.zeros(0, dtype=np.int64)
        self.recommend(ctx, k, exclude)
        self.costs = StageCosts()
        for _ in range(3):
            self.recommend(ctx, k, exclude)
        return time.perf_counter() - started

    def user_embedding(self, ctx: UserContext) -> np.ndarray:
        """(D,) float32 query vector from the user's features and recent history."""
        row = ctx.row
        recent = self._trained(ctx.history)[: self.models.history_length]
        return self.models.user_query(row.user, row.gender, row.age, row.occupation, row.zip, recent)

    def popular(self, blocked: np.ndarray, count: int) -> ChannelCandidates:
        """The ``count`` most popular items not in ``blocked``, scored relative to the most popular."""
        return self._popular_candidates(self.models.popular_order[: count + len(blocked)], blocked, count)

    def _popular_candidates(self, pool: np.ndarray, blocked: np.ndarray, count: int) -> ChannelCandidates:
        """The first ``count`` of ``pool`` (most popular first) not in ``blocked``, scored relative to the
        most popular of them."""
        pool = pool[keep_unblocked(pool, blocked, count)]
        pop = self.models.popularity[pool]
        return ChannelCandidates(pool, (pop / max(pop.max(initial=0.0), 1.0)).astype(np.float32), POPULAR)

    def popular_in_genres(
        self, genres: tuple[int, ...], blocked: np.ndarray, count: int
    ) -> ChannelCandidates:
        """The ``count`` most popular items of any of ``genres`` (ids) not in ``blocked``: a request that
        keeps only some genres gets candidates of them even when the personal channels found few."""
        attributes = self.models.attributes
        if attributes is None or not genres:
            return ChannelCandidates.empty(POPULAR)
        lists = []
        for genre in genres:
            ordered = self._genre_popular.get(genre)
            if ordered is None:  # a benign race: two threads may both build it, and either's is right
                order = self.models.popular_order
                ordered = order[(attributes.genres[order] == genre).any(1)]
                self._genre_popular[genre] = ordered
            lists.append(ordered[: count + len(blocked)])
        pool = lists[0] if len(lists) == 1 else np.unique(np.concatenate(lists))
        if len(lists) > 1:  # most popular first again, across the genres
            pool = pool[np.argsort(-self.models.popularity[pool], kind="stable")]
        return self._popular_candidates(pool, blocked, count)

    def two_tower(self, query: np.ndarray, blocked: np.ndarray, count: int) -> ChannelCandidates:
        """Up to ``count`` nearest items to ``query`` (D,) from the ANN index, ``blocked`` removed."""
        scores, items = self.models.index.search(query[None, :], count + len(blocked))
        return ChannelCandidates.top(items[0], scores[0], blocked, count, TWO_TOWER)

    def recall(
        self, ctx: UserContext, extra: int = 0, plan: Plan = Plan.FULL
    ) -> tuple[MergedCandidates, np.ndarray | None]:
        """Every channel's candidates for the user, merged and de-duplicated, and the two-tower query
        (None for anonymous users, who get popular items only). ``extra`` widens the two-tower quota. A
        ``plan`` short of FULL recalls less: a reduced two-tower channel alone, or popular items only."""
        if ctx.anonymous or plan is Plan.POPULAR:
            return merge_channels([self.popular(ctx.seen, self.models.num_candidates + extra)]), None
        query = self.user_embedding(ctx)
        if plan is Plan.FULL:
            return self.channels(ctx, query, extra), query
        count = max(int(self.models.num_candidates * REDUCED_SHARE), 1) + extra
        return merge_channels([self.two_tower(query, ctx.seen, count)]), query

    def channels(self, ctx: UserContext, query: np.ndarray, extra: int = 0) -> MergedCandidates:
        """The personal channels for a user with two-tower ``query`` (D,): the ANN, plus co-occurrence
        from recent items, or popular-in-segment for a user with no history."""
        two_tower = self.two_tower(query, ctx.seen, self.models.num_candidates + extra)
        # the other channels start from what the user did: items the models know (they propose no others)
        history, seen = self._trained(ctx.history), self._trained(ctx.seen)
        return self.models.channels.merge(two_tower, history, seen, ctx.row.gender, ctx.row.age)

    def _trained(self, items: np.ndarray) -> np.ndarray:
        """``items`` without those added while serving, which no model knows."""
        trained = self.models.trained_items
        return items if not len(items) or items.max() < trained else items[items < trained]

    def recommend(
        self,
        ctx: UserContext,
        k: int,
        exclude: np.ndarray,
        plan: Plan = Plan.FULL,
        explain: bool = False,
        options: RecommendOptions | None = None,
    ) -> Recommendation:
        """Excluded items are removed after ranking, from a candidate list widened by their number, so
        excluding an item never changes the features, and so the scores, of the others. A ``plan`` short
        of FULL does less work (see ``Plan``) to answer within a deadline. ``explain``: say why each item
        is where it is (``Recommendation.fired``). ``options``: the request's surface, genres, exploration
        seed, pin impressions and page offset, for the rules."""
        ranked = self.rank(ctx, k, exclude, plan, options)
        timings = ranked.stage_ms
        started = time.perf_counter()
        request = self.rerank_request(ctx, exclude, options)
        result = self.rules.apply(ranked.items, ranked.scores, request, k, explain)
        timings["rerank"] = (time.perf_counter() - started) * 1e3
        channels, channel_scores, merged = ranked.channels, ranked.channel_scores, ranked.merged
        rows = result.positions
        proposed = rows >= 0  # False: an item a pin added, which no channel proposed
        names = [PINNED] * len(rows)
        item_channel_scores = np.zeros(len(rows), dtype=np.float32)
        for slot in np.flatnonzero(proposed).tolist():
            names[slot] = merged.channel_names[channels[rows[slot]]]
            item_channel_scores[slot] = channel_scores[rows[slot]]
        return Recommendation(
            result.items,
            result.scores,
            names,
            item_channel_scores,
            timings,
            plan,
            ranker_scores=result.base_scores,
            fired=result.fired,
            removed=result.removed,
            propensities=result.propensities,
            shown_pins=result.shown_pins,
        )

    def rank(
        self,
        ctx: UserContext,
        k: int,
        exclude: np.ndarray,
        plan: Plan = Plan.FULL,
        options: RecommendOptions | None = None,
    ) -> Ranked:
        """Recall and ranking: the candidates and their ranker scores, before any rule (``recommend``'s
        first two stages; the offline evaluation applies several rule sets to one ranking)."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        merged, query = self.recall(ctx, extra=len(exclude), plan=plan)
        if options is not None and options.include_genres:
            blocked = np.concatenate([ctx.seen, exclude])
            count = max(self.models.num_candidates // GENRE_CANDIDATE_SHARE, k)
            merged = merged.with_channel(self.popular_in_genres(options.include_genres, blocked, count))
        after_recall = time.perf_counter()
        timings["recall"] = (after_recall - start) * 1e3
        items, channels, channel_scores = merged.items, merged.channels, merged.channel_scores
        features_built = after_recall
        if query is None or len(items) == 0 or plan is Plan.RECALL_ORDER:
            scores = channel_scores
        else:
            order, tt_scores, vectors = two_tower_order(items, self.models.index.embeddings, query)
            items, channels, channel_scores = items[order], channels[order], channel_scores[order]
            codes = encode_channels(merged.channel_names)[channels]
            # the rankers see an item added while serving as the unknown item, beside its real vector
            trained = self.models.trained_items
            known = items if items.max() < trained else np.where(items < trained, items, 0)
            batch = self.models.ranking_features.build(
                ctx.row, self._trained(ctx.history), known, tt_scores, codes, ctx.at, vectors
            )
            features_built = time.perf_counter()
            scores = self.models.score(batch)
        after_ranking = time.perf_counter()
        timings["ranking_features"] = (features_built - after_recall) * 1e3
        timings["ranking"] = (after_ranking - features_built) * 1e3
        if plan is Plan.FULL and query is not None:
            self.costs.observe(timings["recall"], timings["ranking_features"] + timings["ranking"])
        return Ranked(merged, items, channels, channel_scores, scores, timings)

    @staticmethod
    def rerank_request(
        ctx: UserContext, exclude: np.ndarray, options: RecommendOptions | None = None
    ) -> RerankRequest:
        traits = ctx.traits if ctx.traits is not None else UserTraits(new_user=not len(ctx.history))
        at = ctx.at if ctx.at is not None else time.time()
        return (options or RecommendOptions()).request(ctx.seen, exclude, at, traits, ctx.events)

    def similar_items(
        self,
        item: int,
        k: int,
        exclude: np.ndarray | None = None,
        options: RecommendOptions | None = None,
        explain: bool = False,
    ) -> RerankResult:
        """The k items nearest to item index ``item`` in the two-tower space, from the same ANN index, that
        pass the request's exclude list and genres and the rules file's filters (``RuleEngine.filter``).
        Filters may remove many neighbours: the search widens until k pass or the catalogue is done."""
        exclude = np.zeros(0, dtype=np.int64) if exclude is None else exclude
        options = options or RecommendOptions()
        request = options.request(np.zeros(0, dtype=np.int64), np.append(exclude, item), time.time())
        total = self.models.index.size
        filtering = self.rules.filters or options.include_genres or options.exclude_genres or len(exclude)
        fetch = k + len(exclude) + (k if filtering else 0)
        while True:
            items, scores = self.models.index.similar(item, min(fetch, total))
            result = self.rules.filter(items, scores, request, k, explain)
            if len(result.items) >= k or fetch >= total:
                return result
            fetch *= 4
