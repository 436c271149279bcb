"""The rules engine: a ranked candidate list -> the k items served, and why.

Stages, each rule applied in the rules file's order within its stage:

1. **filters** remove items: padding and repeats (always), the user's seen items (``rerank.filter_seen``),
   the request's exclude list, then ``blocklist``, ``genre_filter``, ``min_quality``, ``release_window``.
2. **scores**: the ranker's scores are put on one scale, min-max over the surviving candidates into
   [0.1, 1] (a ranker's raw scores can be negative, and a multiplier must mean the same for every ranker),
   then ``boost`` and ``freshness`` rules multiply them.
3. **selection** takes items best first; ``cap`` rules skip an item that would put too many of one genre in
   the capped positions, and an ``mmr`` rule trades each next item's score against its similarity to the
   items already taken.
4. **pins** put campaign items at fixed positions, when they pass the filters.

Without a rules file the scores are the ranker's own and the list is the top k by score, as before rules
existed. Rules whose time window does not cover the request's time are skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from cascade.core.arrays import isin
from cascade.core.errors import ConfigError
from cascade.rerank.catalogue import ItemAttributes
from cascade.rerank.config import RerankConfig
from cascade.rerank.rules_file import (
    BlocklistRule,
    BoostRule,
    CapRule,
    FreshnessRule,
    GenreFilterRule,
    MinQualityRule,
    MMRRule,
    PinRule,
    ReleaseWindowRule,
    RulesFile,
)

logger = logging.getLogger(__name__)

SECONDS_PER_YEAR = 365.2425 * 86400
SCORE_FLOOR = 0.1  # the lowest candidate's score on the common scale: boosts still move it
# MMR reorders the best max(MMR_POOL_PER_ITEM * k, MMR_POOL_MIN) candidates
MMR_POOL_PER_ITEM = 5
MMR_POOL_MIN = 100
NO_RULES_VERSION = "none"


@dataclass(frozen=True)
class RerankResult:
    items: np.ndarray  # (k,) item indices, best first
    scores: np.ndarray  # (k,) final scores
    positions: np.ndarray  # (k,) row of each item in the input, -1 for a pinned item recall did not propose
    # with explain: the rules that fired on each returned item, and how many items each rule removed
    fired: list[list[str]] | None = None
    removed: dict[str, int] = field(default_factory=dict)
    base_scores: np.ndarray | None = None  # (k,) with explain: the ranker's score of each item (NaN: pinned)


@dataclass(frozen=True)
class _Filter:
    label: str
    rule: object
    allowed: np.ndarray | None  # (N,) bool over the catalogue, for rules that do not depend on time


@dataclass(frozen=True)
class _Boost:
    label: str
    rule: BoostRule | FreshnessRule
    hit: np.ndarray | None  # (N,) bool: the items a BoostRule multiplies


class RuleEngine:
    """``rules`` compiled against the served catalogue ``attributes``; immutable, shared by request threads.

    Compiling resolves every item id and genre name once: an unknown genre or pinned item is a ConfigError
    naming the rule (a typo would otherwise silently match nothing); unknown items of a blocklist or boost
    are logged and skipped (they may arrive later)."""

    def __init__(
        self, config: RerankConfig, attributes: ItemAttributes | None, rules: RulesFile | None = None
    ):
        self.config = config
        self.rules = rules
        self.version = rules.version if rules is not None else NO_RULES_VERSION
        self.attributes = attributes
        self.filters: list[_Filter] = []
        self.boosts: list[_Boost] = []
        self.caps: list[tuple[str, CapRule]] = []
        self.mmr: tuple[str, MMRRule] | None = None
        self.pins: list[tuple[str, PinRule, int]] = []
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
            elif isinstance(rule, ReleaseWindowRule):
                self.filters.append(_Filter(label, rule, None))
            elif isinstance(rule, BoostRule):
                hit = self._item_mask(rule.items, where) | self._genre_mask(rule.genres, where)
                self.boosts.append(_Boost(label, rule, hit))
            elif isinstance(rule, FreshnessRule):
                self.boosts.append(_Boost(label, rule, None))
            elif isinstance(rule, CapRule):
                self.caps.append((label, rule))
            elif isinstance(rule, MMRRule):
                if attributes.vectors is None:
                    raise ConfigError(f"{where}: MMR needs item vectors, and this catalogue has none")
                self.mmr = (label, rule)
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
        if not ids:
            return np.zeros(self.attributes.num_items, dtype=bool)
        return (
            isin(self.attributes.genres.ravel(), np.array(ids)).reshape(self.attributes.genres.shape).any(1)
        )

    @property
    def has_rules(self) -> bool:
        return bool(self.filters or self.boosts or self.caps or self.mmr or self.pins)

    # -- request time ---------------------------------------------------------------------------------

    def _passes(self, items: np.ndarray, at: float, removed: dict[str, int] | None) -> np.ndarray:
        """(C,) bool: which of ``items`` every active filter rule keeps."""
        keep = np.ones(len(items), dtype=bool)
        for entry in self.filters:
            if not entry.rule.active(at):  # type: ignore[attr-defined]
                continue
            if entry.allowed is not None:
                allowed = entry.allowed[items]
            else:
                allowed = self._release_window(entry.rule, items, at)  # type: ignore[arg-type]
            if removed is not None:
                count = int(np.count_nonzero(keep & ~allowed))
                if count:
                    removed[entry.label] = removed.get(entry.label, 0) + count
            keep &= allowed
        return keep

    def _requested(
        self, items: np.ndarray, seen: np.ndarray, exclude: np.ndarray, removed: dict[str, int] | None
    ) -> np.ndarray:
        """(C,) bool: which of ``items`` are real items the user has not seen (when ``rerank.filter_seen``)
        and the request does not exclude; counted in ``removed`` under "seen" and "exclude"."""
        keep = items > 0
        for label, pool, applies in (
            ("seen", seen, self.config.filter_seen),
            ("exclude", exclude, True),
        ):
            if applies and len(pool):
                hit = keep & isin(items, pool)
                if removed is not None and hit.any():
                    removed[label] = int(np.count_nonzero(hit))
                keep &= ~hit
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

    def apply(
        self,
        items: np.ndarray,
        scores: np.ndarray,
        seen: np.ndarray,
        exclude: np.ndarray,
        k: int,
        at: float,
        explain: bool = False,
    ) -> RerankResult:
        """items, scores: (C,) candidates and their ranker scores; ``at``: the request's unix time. Returns
        at most k items, best first."""
        items = np.asarray(items, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        removed: dict[str, int] | None = {} if explain else None
        keep = self._requested(items, seen, exclude, removed)
        if self.filters:
            keep &= self._passes(items, at, removed)
        rows = np.flatnonzero(keep)
        # best score first, then lowest item index: deterministic order on ties; repeats keep their best
        rows = rows[np.lexsort((items[rows], -scores[rows]))]
        _, first = np.unique(items[rows], return_index=True)
        rows = rows[np.sort(first)]
        if not self.has_rules:
            rows = rows[:k]
            return RerankResult(
                items[rows],
                scores[rows],
                rows,
                fired=[[] for _ in rows] if explain else None,
                removed=removed or {},
                base_scores=scores[rows] if explain else None,
            )
        candidates = items[rows]
        final = _common_scale(scores[rows])
        factors: list[tuple[str, np.ndarray]] = []  # with explain: each boost that fired, per candidate
        for boost in self.boosts:
            if not boost.rule.active(at):
                continue
            if boost.hit is not None:
                factor = np.where(boost.hit[candidates], np.float32(boost.rule.factor), np.float32(1.0))
            else:
                factor = self._freshness(boost.rule, candidates, at)  # type: ignore[arg-type]
            final = final * factor
            if explain:
                factors.append((boost.label, factor))
        # explanations are written for the items returned only: a few strings, not one per candidate
        fired: dict[int, list[str]] | None = {} if explain else None
        chosen = self._select(candidates, final, k, at, fired, removed)
        if fired is not None:
            for position in chosen.tolist():
                # a factor that rounds to 1 (an old film's freshness) did not change anything worth saying
                shown = ((name, f"{f[position]:.3g}") for name, f in factors)
                boosts = [f"{name} x{factor}" for name, factor in shown if factor != "1"]
                fired[position] = boosts + fired.get(position, [])
        out_items, out_scores, out_rows = candidates[chosen], final[chosen], rows[chosen]
        out_fired = [fired[c] for c in chosen.tolist()] if fired is not None else None
        out_items, out_scores, out_rows, out_fired = self._pin(
            out_items, out_scores, out_rows, out_fired, seen, exclude, k, at, removed
        )
        base = None
        if explain:
            base = np.full(len(out_rows), np.nan, dtype=np.float32)
            proposed = out_rows >= 0
            base[proposed] = scores[out_rows[proposed]]
        return RerankResult(out_items, out_scores, out_rows, out_fired, removed or {}, base)

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
        at: float,
        fired: dict[int, list[str]] | None,
        removed: dict[str, int] | None,
    ) -> np.ndarray:
        """Positions into ``candidates`` of the items taken, in order: best first, or by MMR's trade-off
        among the best ``mmr_pool(k)``; an item a cap blocks at a position waits, and may be taken past the
        positions the cap covers."""
        caps = [(label, rule) for label, rule in self.caps if rule.active(at)]
        mmr = self.mmr if self.mmr is not None and self.mmr[1].active(at) else None
        order = np.argsort(-final, kind="stable")
        if (not caps and mmr is None) or not len(order):
            return order[:k]
        assert self.attributes is not None
        if mmr is not None:
            # MMR reorders the best few: an item far down the list would need a relevance it does not have
            order = order[: mmr_pool(k)]
        gate = _CapGate(caps, candidates[order], self.attributes)
        if mmr is None:
            picks = gate.take_in_order(len(order), k)
        else:
            vectors = self.attributes.vectors_of(candidates[order])
            relevance = final[order] / max(float(final[order[0]]), 1e-12)
            picks = gate.take_by_mmr(relevance, vectors @ vectors.T, mmr[1].lambda_, k)
        if removed is not None:
            for reason, count in gate.held_back(picks, k).items():
                removed[reason] = removed.get(reason, 0) + count
        if fired is not None and mmr is not None:
            for position, pick in enumerate(picks):
                if pick != position:  # moved by MMR: say where its score alone would have put it
                    fired[int(order[pick])] = [f"{mmr[0]} (#{pick + 1} by score)"]
        return order[np.asarray(picks, dtype=np.int64)]

    def _pin(
        self,
        items: np.ndarray,
        scores: np.ndarray,
        rows: np.ndarray,
        fired: list[list[str]] | None,
        seen: np.ndarray,
        exclude: np.ndarray,
        k: int,
        at: float,
        removed: dict[str, int] | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[str]] | None]:
        active = [(label, rule, item) for label, rule, item in self.pins if rule.active(at)]
        if not active:
            return items, scores, rows, fired
        entries = list(zip(items.tolist(), scores.tolist(), rows.tolist(), fired or [[] for _ in items]))
        for label, rule, item in sorted(active, key=lambda pin: pin[1].position):
            pinned = np.array([item])
            if not (self._requested(pinned, seen, exclude, None) & self._passes(pinned, at, None))[0]:
                if removed is not None:
                    removed[label] = removed.get(label, 0) + 1
                continue
            existing = next((entry for entry in entries if entry[0] == item), None)
            if existing is not None:
                entries.remove(existing)
            slot = min(rule.position - 1, len(entries))
            # a pinned item takes the score of the place it is put in, so the list's scores stay ordered
            score = entries[slot][1] if slot < len(entries) else (entries[-1][1] if entries else 1.0)
            why = [*(existing[3] if existing is not None else []), f"{label}@{rule.position}"]
            entries.insert(slot, (item, score, existing[2] if existing is not None else -1, why))
        entries = entries[:k]
        return (
            np.array([e[0] for e in entries], dtype=np.int64),
            np.array([e[1] for e in entries], dtype=np.float32),
            np.array([e[2] for e in entries], dtype=np.int64),
            [e[3] for e in entries] if fired is not None else None,
        )


def mmr_pool(k: int) -> int:
    """How many of the best candidates MMR reorders for a list of k."""
    return max(MMR_POOL_PER_ITEM * k, MMR_POOL_MIN)


class _CapGate:
    """The cap rules' bookkeeping while a list is filled: whether the item at a position of the
    candidates' order may be taken at the list's next position, and which items waited and why.

    ``items[p]``: the item at position p. Plain Python, each item's genres read when it is first checked: a
    list takes a few dozen checks of a few genres each, cheaper than any array operation's overhead."""

    def __init__(self, caps: list[tuple[str, CapRule]], items: np.ndarray, attributes: ItemAttributes):
        self.caps, self.items, self.attributes = caps, items, attributes
        self._genres: dict[int, list[int]] = {}
        self.counts: list[dict[int, int]] = [{} for _ in caps]
        self.waited: dict[int, str] = {}  # position -> the first cap that held it back
        self.taken = 0

    def genres(self, position: int) -> list[int]:
        genres = self._genres.get(position)
        if genres is None:
            genres = [g for g in self.attributes.genres[self.items[position]].tolist() if g > 0]
            self._genres[position] = genres
        return genres

    def blocking(self, position: int) -> str | None:
        """Why the item at ``position`` cannot be taken next (``cap:genre=Comedy``), or None."""
        for (label, rule), count in zip(self.caps, self.counts):
            if rule.within is not None and self.taken >= rule.within:
                continue
            for genre in self.genres(position):
                if count.get(genre, 0) >= rule.max_per_value:
                    return f"{label}:genre={self.attributes.genre_name(genre)}"
        return None

    def allows(self, position: int) -> bool:
        reason = self.blocking(position)
        if reason is None:
            return True
        self.waited.setdefault(position, reason)
        return False

    def take(self, position: int) -> None:
        for (_, rule), count in zip(self.caps, self.counts):
            if rule.within is None or self.taken < rule.within:
                for genre in self.genres(position):
                    count[genre] = count.get(genre, 0) + 1
        self.taken += 1

    def take_in_order(self, available: int, k: int) -> list[int]:
        """Best first: the earliest position each cap allows; waiting items come back when a cap's
        positions end."""
        picks: list[int] = []
        waiting: list[int] = []
        cursor = 0
        while len(picks) < k:
            pick = None
            reopened = any(rule.within is not None and rule.within <= self.taken for _, rule in self.caps)
            if waiting and reopened:
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
        return picks

    def take_by_mmr(self, relevance: np.ndarray, similarity: np.ndarray, weight: float, k: int) -> list[int]:
        """MMR over positions 0..P-1: relevance (P,) in [0, 1], similarity (P, P) cosine."""
        base = ((1 - weight) * relevance).astype(np.float32)
        penalty = np.full(len(relevance), -1.0, dtype=np.float32)  # highest similarity to the items taken
        closed = np.zeros(len(relevance), dtype=bool)  # taken, or waiting on a cap
        value = np.empty_like(base)
        picks: list[int] = []
        while len(picks) < k:
            # value = (1 - weight) * relevance - weight * penalty, closed positions at -inf
            np.multiply(penalty, -weight, out=value)
            value += base
            np.putmask(value, closed, -np.inf)
            pick = int(value.argmax())
            if value[pick] == -np.inf:
                break
            closed[pick] = True
            if not self.allows(pick):
                continue
            self.take(pick)
            picks.append(pick)
            np.maximum(penalty, similarity[pick], out=penalty)
            if any(rule.within == self.taken for _, rule in self.caps):
                for position in self.waited:
                    if position not in picks:
                        closed[position] = False
        return picks

    def held_back(self, picks: list[int], k: int) -> dict[str, int]:
        """Items a cap held back and that were never taken, though they outranked an item taken (or the
        list ended short of k): each under the cap that first held it back."""
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
