"""The rules engine: a ranked candidate list -> the k items served, and why.

Stages, each rule applied in the rules file's order within its stage:

1. **filters** remove items: padding and repeats (always), the user's seen items (``rerank.filter_seen``),
   the request's exclude list and genres, then ``seen`` (by event type and age), ``blocklist``,
   ``genre_filter``, ``min_quality``, ``release_window``.
2. **scores**: the ranker's scores are put on one scale, min-max over the surviving candidates into
   [0.1, 1] (a ranker's raw scores can be negative, and a multiplier must mean the same for every ranker),
   then ``boost``, ``freshness`` and ``popularity`` rules multiply them.
3. **selection** takes items best first; ``cap`` and ``spacing`` rules skip an item that would put too many
   items of one attribute value in the capped positions or in a sliding window, and an ``mmr`` rule trades
   each next item's score against its similarity to the items already taken.
4. **exploration** (``explore``) fills a share of the positions by seeded sampling, and says each item's
   propensity.
5. **promotion slots** (``slot``) put the best-scored promoted candidate at a position, unless one is at
   or above it already.
6. **pins** put campaign items at fixed positions, when they pass the filters and their per-user impression
   cap allows.

Without a rules file the scores are the ranker's own and the list is the top k by score, as before rules
existed. A rule applies to a request only within its time window, for its surfaces and for its segments'
users (``RuleSet.applies``).
"""

from __future__ import annotations

import bisect
import itertools
import logging
from dataclasses import dataclass, field

import numpy as np

from cascade.core.arrays import isin
from cascade.core.errors import ConfigError
from cascade.rerank.catalogue import ItemAttributes
from cascade.rerank.config import RerankConfig
from cascade.rerank.request import RerankRequest
from cascade.rerank.rules_file import (
    BlocklistRule,
    BoostRule,
    CapRule,
    ExploreRule,
    FreshnessRule,
    GenreFilterRule,
    MinQualityRule,
    MMRRule,
    PinRule,
    PopularityRule,
    ReleaseWindowRule,
    RulesFile,
    SeenRule,
    SlotRule,
    SpacingRule,
    UserTraits,
)

logger = logging.getLogger(__name__)

SECONDS_PER_YEAR = 365.2425 * 86400
SECONDS_PER_DAY = 86400
SCORE_FLOOR = 0.1  # the lowest candidate's score on the common scale: boosts still move it
# MMR reorders the best max(MMR_POOL_PER_ITEM * k, MMR_POOL_MIN) candidates
MMR_POOL_PER_ITEM = 5
MMR_POOL_MIN = 100
NO_RULES_VERSION = "none"
REQUEST_GENRES = "request:genres"  # how explanations count items the request's genre filter removed
DELETED = "deleted"  # ... and items deleted from the catalogue (CatalogueAdmin.DeleteItem)


@dataclass(frozen=True)
class RerankResult:
    items: np.ndarray  # (k,) item indices, best first
    scores: np.ndarray  # (k,) final scores
    positions: np.ndarray  # (k,) row of each item in the input, -1 for a pinned item recall did not propose
    # with explain: the rules that fired on each returned item, and how many items each rule removed
    fired: list[list[str]] | None = None
    removed: dict[str, int] = field(default_factory=dict)
    base_scores: np.ndarray | None = None  # (k,) with explain: the ranker's score of each item (NaN: pinned)
    # (k,) the probability the rules put each item at its position given the ones before: 1 but for
    # exploration's draws
    propensities: np.ndarray | None = None
    shown_pins: tuple[PinRule, ...] = ()  # pins with an impression cap that were placed


@dataclass(frozen=True)
class _Filter:
    label: str
    rule: object
    allowed: np.ndarray | None  # (N,) bool over the catalogue, for rules that depend on the item alone


@dataclass(frozen=True)
class _Boost:
    label: str
    rule: BoostRule | FreshnessRule | PopularityRule
    # (N,) float32: each item's multiplier, for the rules whose multiplier depends on the item alone
    # (boost, popularity), computed once at compile; None for freshness, which depends on the request's time
    factors: np.ndarray | None


class RuleEngine:
    """``rules`` compiled against the served catalogue ``attributes``; immutable, shared by request threads.

    Compiling resolves every item id and genre name once: an unknown genre or pinned item is a ConfigError
    naming the rule (a typo would otherwise silently match nothing); unknown items of a blocklist or boost
    are logged and skipped (they may arrive later)."""

    def __init__(
        self,
        config: RerankConfig,
        attributes: ItemAttributes | None,
        rules: RulesFile | None = None,
        deleted: np.ndarray | None = None,
    ):
        """``deleted``: (N,) bool, the catalogue's deleted items, never served whatever the rules say."""
        self.config = config
        self.rules = rules
        self.deleted = deleted if deleted is not None and deleted.any() else None
        self.version = rules.version if rules is not None else NO_RULES_VERSION
        self.attributes = attributes
        self.filters: list[_Filter] = []
        self.boosts: list[_Boost] = []
        self.gates: list[tuple[str, CapRule | SpacingRule]] = []
        self.mmrs: list[tuple[str, MMRRule]] = []
        self.explorers: list[tuple[str, ExploreRule]] = []
        self.pins: list[tuple[str, PinRule, int]] = []
        self.slots: list[tuple[str, SlotRule, np.ndarray]] = []  # (N,) bool: the items each promotes
        if rules is None or not rules.rules:
            return
        if attributes is None:
            raise ConfigError("rules need the catalogue's item attributes")
        for position, rule in enumerate(rules.rules):
            label = rule.label
            where = f"rules[{position}] ({label})"
            if isinstance(rule, BlocklistRule):
                allowed = ~(self._item_mask(rule.items, where) | self._genre_mask(rule.genres, where))
                self.filters.append(_Filter(label, rule, allowed))
            elif isinstance(rule, GenreFilterRule):
                allowed = ~self._genre_mask(rule.exclude, where)
                if rule.include:
                    allowed &= self._genre_mask(rule.include, where)
                self.filters.append(_Filter(label, rule, allowed))
            elif isinstance(rule, MinQualityRule):
                quality = attributes.quality
                self.filters.append(
                    _Filter(label, rule, np.isnan(quality) | (quality >= rule.min_mean_rating))
                )
            elif isinstance(rule, ReleaseWindowRule | SeenRule):
                self.filters.append(_Filter(label, rule, None))
            elif isinstance(rule, BoostRule):
                hit = self._item_mask(rule.items, where) | self._genre_mask(rule.genres, where)
                self.boosts.append(
                    _Boost(label, rule, np.where(hit, np.float32(rule.factor), np.float32(1.0)))
                )
            elif isinstance(rule, FreshnessRule):
                self.boosts.append(_Boost(label, rule, None))
            elif isinstance(rule, PopularityRule):
                if attributes.popularity is None:
                    raise ConfigError(
                        f"{where}: popularity needs item popularity, and this catalogue has none"
                    )
                self.boosts.append(_Boost(label, rule, _popularity_factors(rule, attributes.popularity)))
            elif isinstance(rule, CapRule | SpacingRule):
                self.gates.append((label, rule))
            elif isinstance(rule, MMRRule):
                if attributes.vectors is None:
                    raise ConfigError(f"{where}: MMR needs item vectors, and this catalogue has none")
                self.mmrs.append((label, rule))
            elif isinstance(rule, ExploreRule):
                self.explorers.append((label, rule))
            elif isinstance(rule, SlotRule):
                promoted = np.ones(attributes.num_items, dtype=bool)
                if rule.items or rule.genres:
                    promoted = self._item_mask(rule.items, where) | self._genre_mask(rule.genres, where)
                if rule.min_mean_rating is not None:
                    promoted &= np.nan_to_num(attributes.quality, nan=-np.inf) >= rule.min_mean_rating
                self.slots.append((label, rule, promoted))
            elif isinstance(rule, PinRule):
                item = attributes.item_index(rule.item)
                if item is None:
                    raise ConfigError(f"{where}.item: {rule.item!r} is not in the served catalogue")
                self.pins.append((label, rule, item))

    def _item_mask(self, ids: tuple[str, ...], where: str) -> np.ndarray:
        assert self.attributes is not None
        mask = np.zeros(self.attributes.num_items, dtype=bool)
        unknown = []
        for item_id in ids:
            index = self.attributes.item_index(item_id)
            if index is None:
                unknown.append(item_id)
            else:
                mask[index] = True
        if unknown:
            logger.warning("%s: %d item id(s) not in the served catalogue, skipped", where, len(unknown))
        return mask

    def _genre_mask(self, names: tuple[str, ...], where: str) -> np.ndarray:
        assert self.attributes is not None
        ids = []
        for name in names:
            genre = self.attributes.genre_id(name)
            if genre is None:
                known = ", ".join(self.attributes.genre_names)
                raise ConfigError(f"{where}.genres: unknown genre {name!r}; the catalogue's genres: {known}")
            ids.append(genre)
        return self._genre_ids_mask(ids)

    def _genre_ids_mask(self, ids: list[int] | tuple[int, ...]) -> np.ndarray:
        assert self.attributes is not None
        if not ids:
            return np.zeros(self.attributes.num_items, dtype=bool)
        genres = self.attributes.genres
        return isin(genres.ravel(), np.array(ids)).reshape(genres.shape).any(1)

    @property
    def counted_pins(self) -> list[str]:
        """Names of the pins with a per-user impression cap: the counters a request reads first."""
        return [rule.name for _, rule, _ in self.pins if rule.max_impressions is not None]

    @property
    def has_rules(self) -> bool:
        return bool(
            self.filters
            or self.boosts
            or self.gates
            or self.mmrs
            or self.explorers
            or self.pins
            or self.slots
        )

    def segments_of(self, user: UserTraits) -> frozenset[str]:
        """The rules file's segments ``user`` is in."""
        return self.rules.segments_of(user) if self.rules is not None else frozenset()

    # -- request time ---------------------------------------------------------------------------------

    def _passes(
        self,
        items: np.ndarray,
        request: RerankRequest,
        segments: frozenset[str],
        removed: dict[str, int] | None,
    ) -> np.ndarray:
        """(C,) bool: which of ``items`` every filter rule that applies keeps."""
        keep = np.ones(len(items), dtype=bool)
        for entry in self.filters:
            rule = entry.rule
            if not rule.applies(request.at, request.surface, segments):  # type: ignore[attr-defined]
                continue
            if entry.allowed is not None:
                allowed = entry.allowed[items]
            elif isinstance(rule, SeenRule):
                allowed = ~isin(items, self._seen_by(rule, request))
            else:
                allowed = self._release_window(rule, items, request.at)  # type: ignore[arg-type]
            if removed is not None:
                count = int(np.count_nonzero(keep & ~allowed))
                if count:
                    removed[entry.label] = removed.get(entry.label, 0) + count
            keep &= allowed
        return keep

    @staticmethod
    def _seen_by(rule: SeenRule, request: RerankRequest) -> np.ndarray:
        """(S,) items of the request's recent events that ``rule`` counts."""
        history = request.history
        if history is None or not len(history):
            return np.zeros(0, dtype=np.int64)
        counted = np.ones(len(history), dtype=bool)
        if rule.event_types:
            counted &= isin(history[:, 1], np.array(rule.event_codes))
        if rule.max_age_days is not None:
            counted &= history[:, 2] >= request.at - rule.max_age_days * SECONDS_PER_DAY
        return history[counted, 0]

    def _requested(
        self, items: np.ndarray, request: RerankRequest, removed: dict[str, int] | None
    ) -> np.ndarray:
        """(C,) bool: which of ``items`` are real items, not deleted from the catalogue, the user has not seen
        (when ``rerank.filter_seen``), the request does not exclude, and of the genres it asks for; counted
        in ``removed`` under "deleted", "seen", "exclude" and "request:genres"."""
        keep = items > 0
        if self.deleted is not None:
            inside = items < len(self.deleted)
            hit = keep & inside & self.deleted[np.where(inside, items, 0)]
            if removed is not None and hit.any():
                removed[DELETED] = int(np.count_nonzero(hit))
            keep &= ~hit
        for label, pool, applies in (
            ("seen", request.seen, self.config.filter_seen),
            ("exclude", request.exclude, True),
        ):
            if applies and len(pool):
                hit = keep & isin(items, pool)
                if removed is not None and hit.any():
                    removed[label] = int(np.count_nonzero(hit))
                keep &= ~hit
        if (request.include_genres or request.exclude_genres) and self.attributes is not None:
            genres = self.attributes.genres[items]
            allowed = ~isin(genres.ravel(), np.array(request.exclude_genres)).reshape(genres.shape).any(1)
            if request.include_genres:
                allowed &= isin(genres.ravel(), np.array(request.include_genres)).reshape(genres.shape).any(1)
            hit = keep & ~allowed
            if removed is not None and hit.any():
                removed[REQUEST_GENRES] = int(np.count_nonzero(hit))
            keep &= allowed
        return keep

    def _release_window(self, rule: ReleaseWindowRule, items: np.ndarray, at: float) -> np.ndarray:
        assert self.attributes is not None
        years = self.attributes.years[items]
        keep = np.ones(len(items), dtype=bool)
        if rule.min_year is not None:
            keep &= years >= rule.min_year
        if rule.max_year is not None:
            keep &= years <= rule.max_year
        if rule.max_age_years is not None:
            keep &= _age_years(years, at) <= rule.max_age_years
        return keep | (years <= 0)

    def filter(
        self, items: np.ndarray, scores: np.ndarray, request: RerankRequest, k: int, explain: bool = False
    ) -> RerankResult:
        """The filter stage alone: the first k of ``items`` (C,) by ``scores`` that every filter that
        applies keeps, with their own scores (SimilarItems: neighbours are not re-scored or reordered)."""
        items = np.asarray(items, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        removed: dict[str, int] | None = {} if explain else None
        rows, _ = self._surviving(items, scores, request, removed)
        return _unchanged(items, scores, rows[:k], explain, removed)

    def _surviving(
        self, items: np.ndarray, scores: np.ndarray, request: RerankRequest, removed: dict[str, int] | None
    ) -> tuple[np.ndarray, frozenset[str]]:
        """Rows of the candidates every filter keeps, best score first, each item once; and the segments
        of the request's user."""
        segments = self.segments_of(request.user) if self.has_rules else frozenset()
        keep = self._requested(items, request, removed)
        if self.filters:
            keep &= self._passes(items, request, segments, removed)
        rows = np.flatnonzero(keep)
        # best score first, then lowest item index: deterministic order on ties; repeats keep their best
        rows = rows[np.lexsort((items[rows], -scores[rows]))]
        _, first = np.unique(items[rows], return_index=True)
        return rows[np.sort(first)], segments

    def apply(
        self,
        items: np.ndarray,
        scores: np.ndarray,
        request: RerankRequest,
        k: int,
        explain: bool = False,
    ) -> RerankResult:
        """items, scores: (C,) candidates and their ranker scores. Returns at most k items, best first."""
        items = np.asarray(items, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        removed: dict[str, int] | None = {} if explain else None
        rows, segments = self._surviving(items, scores, request, removed)
        if not self.has_rules:
            return _unchanged(items, scores, rows[:k], explain, removed)
        at, surface = request.at, request.surface
        candidates = items[rows]
        final = _common_scale(scores[rows])
        factors: list[tuple[str, np.ndarray]] = []  # with explain: each boost that fired, per candidate
        for boost in self.boosts:
            if not boost.rule.applies(at, surface, segments):
                continue
            if boost.factors is not None:
                factor = boost.factors[candidates]
            else:
                factor = self._freshness(boost.rule, candidates, at)  # type: ignore[arg-type]
            final = final * factor
            if explain:
                factors.append((boost.label, factor))
        # explanations are written for the items returned only: a few strings, not one per candidate
        fired: dict[int, list[str]] | None = {} if explain else None
        chosen = self._select(candidates, final, k, request, segments, fired, removed)
        explore = next((e for e in self.explorers if e[1].applies(at, surface, segments)), None)
        if explore is not None:
            chosen, propensities = _explore(chosen, final, explore, request.seed, fired)
        else:
            propensities = np.ones(len(chosen), dtype=np.float32)
        if fired is not None:
            for position in chosen.tolist():
                # a factor that rounds to 1 (an old film's freshness) did not change anything worth saying
                shown = ((name, f"{f[position]:.3g}") for name, f in factors)
                boosts = [f"{name} x{factor}" for name, factor in shown if factor != "1"]
                fired[position] = boosts + fired.get(position, [])
        listed = _Listed(
            candidates[chosen].tolist(),
            final[chosen].tolist(),
            rows[chosen].tolist(),
            propensities.tolist(),
            [fired[c] for c in chosen.tolist()] if fired is not None else [[] for _ in chosen.tolist()],
        )
        self._promote(listed, candidates, final, rows, request, segments, k, removed)
        shown_pins = self._pin(listed, request, segments, k, removed)
        base = None
        out_rows = np.array(listed.rows, dtype=np.int64)
        if explain:
            base = np.full(len(out_rows), np.nan, dtype=np.float32)
            proposed = out_rows >= 0
            base[proposed] = scores[out_rows[proposed]]
        return RerankResult(
            np.array(listed.items, dtype=np.int64),
            np.array(listed.scores, dtype=np.float32),
            out_rows,
            listed.fired if explain else None,
            removed or {},
            base,
            np.array(listed.propensities, dtype=np.float32),
            shown_pins,
        )

    def _promote(
        self,
        listed: _Listed,
        candidates: np.ndarray,
        final: np.ndarray,
        rows: np.ndarray,
        request: RerankRequest,
        segments: frozenset[str],
        k: int,
        removed: dict[str, int] | None,
    ) -> None:
        """Fill the promotion slots that apply, in place: each with the best-scored promoted candidate
        not listed above it, unless a promoted item is listed at or above it already."""
        first, last = request.offset + 1, request.offset + k
        for label, rule, promoted in sorted(self.slots, key=lambda slot: slot[1].position):
            if not (first <= rule.position <= last and rule.applies(request.at, request.surface, segments)):
                continue
            slot = rule.position - request.offset - 1
            if any(promoted[item] for item in listed.items[: slot + 1]):
                continue
            eligible = np.flatnonzero(promoted[candidates])
            if not len(eligible):
                if removed is not None:  # nothing to promote: said like a filtered pin
                    removed[label] = removed.get(label, 0) + 1
                continue
            best = int(eligible[np.argmax(final[eligible])])
            listed.insert(int(candidates[best]), slot, f"{label}@{rule.position}", row=int(rows[best]))
        listed.cut(k)

    def _freshness(self, rule: FreshnessRule, items: np.ndarray, at: float) -> np.ndarray:
        assert self.attributes is not None
        years = self.attributes.years[items]
        age = np.maximum(_age_years(years, at), 0.0)
        factor = 1.0 + rule.weight * np.exp2(-age / rule.half_life_years)
        return np.where(years > 0, factor, 1.0).astype(np.float32)

    def _select(
        self,
        candidates: np.ndarray,
        final: np.ndarray,
        k: int,
        request: RerankRequest,
        segments: frozenset[str],
        fired: dict[int, list[str]] | None,
        removed: dict[str, int] | None,
    ) -> np.ndarray:
        """Positions into ``candidates`` of the items taken, in order: best first, or by MMR's trade-off
        among the best ``mmr_pool(k)``; an item a cap or spacing rule blocks at a position waits, and may be
        taken at a later position they allow."""
        at, surface = request.at, request.surface
        gates = [(label, rule) for label, rule in self.gates if rule.applies(at, surface, segments)]
        mmr = next((m for m in self.mmrs if m[1].applies(at, surface, segments)), None)
        order = np.argsort(-final, kind="stable")
        if (not gates and mmr is None) or not len(order):
            return order[:k]
        assert self.attributes is not None
        if mmr is not None:
            # MMR reorders the best few: an item far down the list would need a relevance it does not have
            order = order[: mmr_pool(k)]
        gate = _Gate(gates, candidates[order], self.attributes)
        if mmr is None:
            picks = gate.take_in_order(len(order), k)
        else:
            vectors = self.attributes.vectors_of(candidates[order])
            relevance = final[order] / max(float(final[order[0]]), 1e-12)
            picks = gate.take_by_mmr(relevance, vectors @ vectors.T, mmr[1].lambda_, k)
        if removed is not None:
            for reason, count in gate.held_back(picks, k).items():
                removed[reason] = removed.get(reason, 0) + count
        if fired is not None:
            for position, pick in enumerate(picks):
                # held back by a cap or spacing rule, or moved by MMR: say where its score alone put it
                if pick in gate.waited:
                    fired[int(order[pick])] = [f"{gate.waited[pick]} (#{pick + 1} by score)"]
                elif mmr is not None and pick != position:
                    fired[int(order[pick])] = [f"{mmr[0]} (#{pick + 1} by score)"]
        return order[np.asarray(picks, dtype=np.int64)]

    def _pin(
        self,
        listed: _Listed,
        request: RerankRequest,
        segments: frozenset[str],
        k: int,
        removed: dict[str, int] | None,
    ) -> tuple[PinRule, ...]:
        """Put the pins that apply into ``listed``, in place; returns those with an impression cap."""
        first, last = request.offset + 1, request.offset + k  # the positions this list covers
        active = [
            (label, rule, item)
            for label, rule, item in self.pins
            if first <= rule.position <= last and rule.applies(request.at, request.surface, segments)
        ]
        shown: list[PinRule] = []
        for label, rule, item in sorted(active, key=lambda pin: pin[1].position):
            pinned = np.array([item])
            capped = (
                rule.max_impressions is not None
                and request.impressions.get(rule.name, 0) >= rule.max_impressions
            )
            passes = self._requested(pinned, request, None) & self._passes(pinned, request, segments, None)
            if capped or not passes[0]:
                if removed is not None:
                    removed[label] = removed.get(label, 0) + 1
                continue
            listed.insert(item, rule.position - request.offset - 1, f"{label}@{rule.position}")
            if rule.max_impressions is not None:
                shown.append(rule)
        listed.cut(k)
        return tuple(shown)


def _popularity_factors(rule: PopularityRule, popularity: np.ndarray) -> np.ndarray:
    """(N,) float32: 1 + weight x log(1 + n) / log(1 + n_max) of every item."""
    counts = np.log1p(np.maximum(popularity.astype(np.float64), 0.0))
    top = float(counts.max()) if len(counts) else 0.0
    return np.asarray(1.0 + rule.weight * (counts / top if top > 0 else 0.0), dtype=np.float32)


@dataclass
class _Listed:
    """The list being built, one entry per position; pins are inserted into it."""

    items: list[int]
    scores: list[float]
    rows: list[int]
    propensities: list[float]
    fired: list[list[str]]

    def insert(self, item: int, slot: int, why: str, row: int = -1) -> None:
        """Put ``item`` at ``slot`` (moving it there when listed already), with the score of the place it
        is put in, so that the list's scores stay ordered. ``row``: its row in the ranked input (-1: not
        proposed by recall)."""
        reasons: list[str] = []
        if item in self.items:
            at = self.items.index(item)
            row, reasons = self.rows[at], self.fired[at]
            for column in (self.items, self.scores, self.rows, self.propensities, self.fired):
                del column[at]
        slot = min(slot, len(self.items))
        last = self.scores[-1] if self.scores else 1.0
        score = self.scores[slot] if slot < len(self.scores) else last
        self.items.insert(slot, item)
        self.scores.insert(slot, score)
        self.rows.insert(slot, row)
        self.propensities.insert(slot, 1.0)
        self.fired.insert(slot, [*reasons, why])

    def cut(self, k: int) -> None:
        for column in (self.items, self.scores, self.rows, self.propensities, self.fired):
            del column[k:]


def _unchanged(
    items: np.ndarray, scores: np.ndarray, rows: np.ndarray, explain: bool, removed: dict[str, int] | None
) -> RerankResult:
    """The candidates at ``rows``, in that order, with their own scores: no rule changed them."""
    return RerankResult(
        items[rows],
        scores[rows],
        rows,
        fired=[[] for _ in rows] if explain else None,
        removed=removed or {},
        base_scores=scores[rows] if explain else None,
        propensities=np.ones(len(rows), dtype=np.float32),
    )


def mmr_pool(k: int) -> int:
    """How many of the best candidates MMR reorders for a list of k."""
    return max(MMR_POOL_PER_ITEM * k, MMR_POOL_MIN)


def _explore(
    chosen: np.ndarray,
    final: np.ndarray,
    explore: tuple[str, ExploreRule],
    seed: int,
    fired: dict[int, list[str]] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``chosen``: positions into the candidates of the list the other rules built; each of its positions is,
    with probability ``share``, filled instead by a draw from the best ``pool`` candidates not yet placed,
    softmax(final / temperature). Returns the new list and each entry's propensity: share x its softmax
    probability, plus (1 - share) when it is the item the list had next.

    Plain Python over the best pool + k candidates (whatever is placed, the best ``pool`` left are among
    them): a list of a few dozen floats per position, cheaper than any array operation's overhead."""
    label, rule = explore
    planned = chosen.tolist()
    if not planned:
        return chosen, np.ones(0, dtype=np.float32)
    rng = np.random.default_rng(seed)
    coins = rng.random(len(planned)).tolist()
    draws = rng.random(len(planned)).tolist()
    best = np.argsort(-final, kind="stable")[: rule.pool + len(planned)]
    logits = final[best].astype(np.float64) / rule.temperature
    # the candidates not placed yet, best first, and their softmax weights, kept aligned
    rows_left = best.tolist()
    weights_left = np.exp(logits - logits.max()).tolist()
    placed: set[int] = set()
    next_planned = 0
    picks: list[int] = []
    propensities: list[float] = []
    for slot in range(len(planned)):
        while next_planned < len(planned) and planned[next_planned] in placed:
            next_planned += 1
        if next_planned == len(planned):
            break
        planned_pick = planned[next_planned]
        pool_rows, pool_weights = rows_left[: rule.pool], weights_left[: rule.pool]
        cumulative = list(itertools.accumulate(pool_weights))
        total = cumulative[-1]
        if coins[slot] < rule.share:
            drawn = min(bisect.bisect_left(cumulative, draws[slot] * total), len(pool_rows) - 1)
            pick = pool_rows[drawn]
        else:
            pick = planned_pick
        chance = pool_weights[pool_rows.index(pick)] / total if pick in pool_rows else 0.0
        propensity = rule.share * chance + (1 - rule.share if pick == planned_pick else 0.0)
        placed.add(pick)
        if pick in rows_left:
            at = rows_left.index(pick)
            del rows_left[at], weights_left[at]
        picks.append(pick)
        propensities.append(propensity)
        if fired is not None and pick != planned_pick:
            fired[pick] = [*fired.get(pick, []), f"{label} (p={propensity:.3g})"]
    return np.array(picks, dtype=np.int64), np.array(propensities, dtype=np.float32)


class _Gate:
    """The cap and spacing rules' bookkeeping while a list is filled: whether the item at a position of the
    candidates' order may be taken at the list's next position, and which items waited and why.

    ``items[p]``: the item at position p. Plain Python, each item's values read when it is first checked: a
    list takes a few dozen checks of a few values each, cheaper than any array operation's overhead."""

    def __init__(
        self, rules: list[tuple[str, CapRule | SpacingRule]], items: np.ndarray, attributes: ItemAttributes
    ):
        self.rules, self.items, self.attributes = rules, items, attributes
        self.attributes_used = sorted({rule.attribute for _, rule in rules})
        self._values: dict[tuple[str, int], list[int]] = {}
        self.counts: list[dict[int, int]] = [{} for _ in rules]  # caps: taken items per value
        self.recent: list[int] = []  # positions taken, in order (spacing looks at the last few)
        self.waited: dict[int, str] = {}  # position -> the first rule that held it back
        self.taken = 0
        self.spacing = any(isinstance(rule, SpacingRule) for _, rule in rules)

    def values(self, attribute: str, position: int) -> list[int]:
        key = (attribute, position)
        values = self._values.get(key)
        if values is None:
            values = self.attributes.values(attribute, int(self.items[position]))
            self._values[key] = values
        return values

    def blocking(self, position: int) -> str | None:
        """Why the item at ``position`` cannot be taken next (``cap:genre=Comedy``), or None."""
        for (label, rule), count in zip(self.rules, self.counts):
            attribute = rule.attribute
            if isinstance(rule, SpacingRule):
                window = self.recent[-(rule.window - 1) :]
                for value in self.values(attribute, position):
                    within = sum(value in self.values(attribute, taken) for taken in window)
                    if within >= rule.max_per_value:
                        return f"{label}:{attribute}={self.attributes.value_label(attribute, value)}"
                continue
            if rule.within is not None and self.taken >= rule.within:
                continue
            for value in self.values(attribute, position):
                if count.get(value, 0) >= rule.max_per_value:
                    return f"{label}:{attribute}={self.attributes.value_label(attribute, value)}"
        return None

    def allows(self, position: int) -> bool:
        reason = self.blocking(position)
        if reason is None:
            return True
        self.waited.setdefault(position, reason)
        return False

    def take(self, position: int) -> None:
        for (_, rule), count in zip(self.rules, self.counts):
            if isinstance(rule, CapRule) and (rule.within is None or self.taken < rule.within):
                for value in self.values(rule.attribute, position):
                    count[value] = count.get(value, 0) + 1
        self.recent.append(position)
        self.taken += 1

    def reopens(self) -> bool:
        """Whether an item held back before may be allowed now: a spacing window moved on, or a cap's
        positions just ended."""
        return self.spacing or any(
            isinstance(rule, CapRule) and rule.within == self.taken for _, rule in self.rules
        )

    def take_in_order(self, available: int, k: int) -> list[int]:
        """Best first: the earliest position the rules allow; waiting items come back when they allow it."""
        picks: list[int] = []
        waiting: list[int] = []
        cursor = 0
        recheck = False
        while len(picks) < k:
            pick = None
            if waiting and recheck:
                pick = next((p for p in waiting if self.allows(p)), None)
                if pick is not None:
                    waiting.remove(pick)
            while pick is None and cursor < available:
                if self.allows(cursor):
                    pick = cursor
                else:
                    waiting.append(cursor)
                cursor += 1
            if pick is None:
                break
            self.take(pick)
            picks.append(pick)
            recheck = recheck or self.reopens()
        return picks

    def take_by_mmr(self, relevance: np.ndarray, similarity: np.ndarray, weight: float, k: int) -> list[int]:
        """MMR over positions 0..P-1: relevance (P,) in [0, 1], similarity (P, P) cosine."""
        base = ((1 - weight) * relevance).astype(np.float32)
        penalty = np.full(len(relevance), -1.0, dtype=np.float32)  # highest similarity to the items taken
        closed = np.zeros(len(relevance), dtype=bool)  # taken, or waiting on a rule
        value = np.empty_like(base)
        picks: list[int] = []
        stale = True  # value must be recomputed: an item was taken
        while len(picks) < k:
            if stale:
                # value = (1 - weight) * relevance - weight * penalty, closed positions at -inf
                np.multiply(penalty, -weight, out=value)
                value += base
                np.putmask(value, closed, -np.inf)
                stale = False
            pick = int(value.argmax())
            if value[pick] == -np.inf:
                break
            closed[pick] = True
            if not self.allows(pick):
                value[pick] = -np.inf  # the others' values still hold: nothing was taken
                continue
            self.take(pick)
            picks.append(pick)
            np.maximum(penalty, similarity[pick], out=penalty)
            stale = True
            if self.reopens():
                taken = set(picks)
                for position in self.waited:
                    if position not in taken:
                        closed[position] = False
        return picks

    def held_back(self, picks: list[int], k: int) -> dict[str, int]:
        """Items a rule held back and that were never taken, though they outranked an item taken (or the
        list ended short of k): each under the rule that first held it back."""
        taken = set(picks)
        lowest = max(picks) if picks and len(picks) == k else None
        reasons: dict[str, int] = {}
        for position, reason in self.waited.items():
            if position not in taken and (lowest is None or position < lowest):
                reasons[reason] = reasons.get(reason, 0) + 1
        return reasons


def _common_scale(scores: np.ndarray) -> np.ndarray:
    """(C,) ranker scores -> [SCORE_FLOOR, 1], order kept; all equal -> 1."""
    if not len(scores):
        return scores.astype(np.float32)
    low, high = float(scores.min()), float(scores.max())
    if high - low <= 0:
        return np.ones(len(scores), dtype=np.float32)
    return (SCORE_FLOOR + (1 - SCORE_FLOOR) * (scores - low) / (high - low)).astype(np.float32)


def _age_years(years: np.ndarray, at: float) -> np.ndarray:
    """Years since release (mid-year) as of unix time ``at``."""
    now = 1970 + at / SECONDS_PER_YEAR
    return now - (years.astype(np.float64) + 0.5)
