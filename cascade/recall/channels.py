"""Recall channels beside the two-tower ANN, and how their candidates are merged.

``RecallChannels.merge`` is the one candidate generator: the pipeline calls it with the ANN's candidates
and the ranker's training examples with exact search's, so the ranker learns from the candidates it is
served.

* ``CooccurrenceRules``: association rules "people who took X also took Y" (the cross-selling of the
  domain papers) mined from interactions that lie within a window of each other in a user's history, with
  support (how many times X and Y co-occurred) and confidence (support / how many times X occurred)
  thresholds. A user's candidates come from the rules of their most recent items.
* ``SegmentPopularity``: the most popular items within each demographic segment (gender x age bucket), the
  channel for users with no history.

Item arrays hold item indices (0 = padding, never returned).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cascade.core.arrays import isin
from cascade.core.engines import LOCAL, OfflineEngine, PartitionedJob, PartResult, contiguous_parts
from cascade.core.schema import AGE_UNKNOWN, COOCCURRENCE, GENDER_UNKNOWN, SEGMENT_POPULAR
from cascade.core.sparse import PairRules, csr_row_entries
from cascade.recall.config import RecallConfig

if TYPE_CHECKING:  # the item-item channel builds on this module's ChannelCandidates
    from cascade.recall.item_item import ItemItemChannel


def keep_unblocked(items: np.ndarray, blocked: np.ndarray, count: int) -> np.ndarray:
    """Positions of the first ``count`` real items (not padding 0) of ``items`` that are not in ``blocked``.

    Every channel, and every evaluation of a ranked list, filters a best-first list this way."""
    return np.flatnonzero((items > 0) & ~isin(items, blocked))[:count]


@dataclass(frozen=True)
class ChannelCandidates:
    """One channel's candidates, best first: items (C,) int64, scores (C,) float32, and the channel's name
    (one of ``cascade.core.schema.RECALL_CHANNELS``)."""

    items: np.ndarray
    scores: np.ndarray
    channel: str

    @classmethod
    def empty(cls, channel: str) -> ChannelCandidates:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), channel)

    @classmethod
    def top(
        cls, items: np.ndarray, scores: np.ndarray, blocked: np.ndarray, count: int, channel: str
    ) -> ChannelCandidates:
        """The first ``count`` of a best-first list, padding and ``blocked`` items removed."""
        keep = keep_unblocked(items, blocked, count)
        return cls(items[keep], scores[keep].astype(np.float32), channel)


@dataclass(frozen=True)
class MergedCandidates:
    """Candidates of several channels, de-duplicated: items (C,), channel_scores (C,), and each item's
    channel as a position (C,) int64 into ``channel_names``.

    An item several channels propose keeps the first channel's tag and score (channels are given in
    priority order). Channels travel as small integers, not an object array of names: ranking encodes and
    reorders them per candidate, and object arrays cost a Python call per element for either."""

    items: np.ndarray
    channel_scores: np.ndarray
    channels: np.ndarray
    channel_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.items)

    def names(self) -> np.ndarray:
        """(C,) object array of each candidate's channel name."""
        return np.array(self.channel_names, dtype=object)[self.channels]

    def with_channel(self, extra: ChannelCandidates) -> MergedCandidates:
        """These candidates, then ``extra``'s that are not among them, tagged with its channel."""
        names = self.channel_names
        if extra.channel not in names:
            names = (*names, extra.channel)
        new = ~isin(extra.items, self.items) & (extra.items > 0)
        code = np.full(int(np.count_nonzero(new)), names.index(extra.channel), dtype=np.int64)
        return MergedCandidates(
            np.concatenate([self.items, extra.items[new]]).astype(np.int64),
            np.concatenate([self.channel_scores, extra.scores[new]]).astype(np.float32),
            np.concatenate([self.channels, code]),
            names,
        )


def merge_channels(channels: list[ChannelCandidates]) -> MergedCandidates:
    names = tuple(c.channel for c in channels)
    if not channels:
        empty = np.zeros(0, dtype=np.int64)
        return MergedCandidates(empty, np.zeros(0, dtype=np.float32), empty, names)
    items = np.concatenate([c.items for c in channels])
    scores = np.concatenate([c.scores for c in channels])
    which = np.repeat(np.arange(len(channels), dtype=np.int64), [len(c.items) for c in channels])
    _, first = np.unique(items, return_index=True)
    keep = np.sort(first)
    keep = keep[items[keep] > 0]
    return MergedCandidates(items[keep].astype(np.int64), scores[keep].astype(np.float32), which[keep], names)


class _CountPairs(PartitionedJob):
    """One part of the users' sequences (user, item columns, sorted by user, then time) -> its item pairs
    at most ``window`` apart as COO rows, cols and counts (P,), and each item's occurrences (num_items,)."""

    name = "co-occurrence rules"

    def __init__(self, num_items: int, window: int):
        self.num_items, self.window = num_items, window

    def run_part(self, part: dict[str, np.ndarray]) -> PartResult:
        user, item = part["user"], part["item"]
        n = self.num_items
        pairs = sp.csr_matrix((n, n), dtype=np.float32)
        for offset in range(1, self.window + 1):
            same_user = user[offset:] == user[:-offset]
            a, b = item[:-offset][same_user], item[offset:][same_user]
            distinct = a != b
            a, b = a[distinct], b[distinct]
            ones = np.ones(2 * len(a), dtype=np.float32)
            pairs = pairs + sp.csr_matrix(
                (ones, (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n, n)
            )
        pairs.sum_duplicates()
        coo = pairs.tocoo()
        return {
            "rows": coo.row.astype(np.int64),
            "cols": coo.col.astype(np.int64),
            "counts": coo.data.astype(np.float32),
            "occurrences": np.bincount(item, minlength=n).astype(np.float32),
        }


class _SelectRules(PartitionedJob):
    """The pairs (rows X, cols Y, counts) of a range of X items, from every part of the users -> the rules
    X -> Y kept (support and confidence thresholds, ``neighbours`` strongest per X) as rows, cols, conf and
    supp, sorted by X, strongest first within each."""

    name = "co-occurrence rules: selection"

    def __init__(
        self,
        num_items: int,
        occurrences: np.ndarray,
        min_support: int,
        min_confidence: float,
        neighbours: int,
    ):
        self.num_items, self.occurrences = num_items, occurrences
        self.min_support, self.min_confidence, self.neighbours = min_support, min_confidence, neighbours

    def run_part(self, part: dict[str, np.ndarray]) -> PartResult:
        n = self.num_items
        pairs = sp.csr_matrix((part["counts"], (part["rows"], part["cols"])), shape=(n, n))
        pairs.sum_duplicates()  # whole counts: the same sum in any order
        coo = pairs.tocoo()
        support = coo.data
        confidence = np.minimum(support / np.maximum(self.occurrences[coo.row], 1.0), 1.0)
        keep = (
            (support >= self.min_support)
            & (confidence >= self.min_confidence)
            & (coo.row > 0)
            & (coo.col > 0)
        )
        rows, cols, conf, supp = coo.row[keep], coo.col[keep], confidence[keep], support[keep]
        # strongest first within each X, then cut to ``neighbours`` per X
        order = np.lexsort((-supp, -conf, rows))
        rows, cols, conf, supp = rows[order], cols[order], conf[order], supp[order]
        starts = np.searchsorted(rows, np.arange(n))
        rank = np.arange(len(rows)) - starts[rows]
        within = rank < self.neighbours
        return {
            "rows": rows[within].astype(np.int64),
            "cols": cols[within].astype(np.int64),
            "conf": conf[within].astype(np.float32),
            "supp": supp[within].astype(np.int32),
        }


class CooccurrenceRules:
    """For each item X, up to ``neighbours`` items Y with support(X, Y) >= min_support and
    confidence(X -> Y) >= min_confidence, strongest first; kept as CSR arrays over item indices."""

    FILE = "cooccurrence.npz"

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, confidence: np.ndarray, support: np.ndarray):
        self.indptr, self.indices, self.confidence, self.support = indptr, indices, confidence, support

    @property
    def num_items(self) -> int:
        return len(self.indptr) - 1

    @property
    def num_rules(self) -> int:
        return len(self.indices)

    @classmethod
    def mine(
        cls,
        user: np.ndarray,
        item: np.ndarray,
        num_items: int,
        *,
        window: int,
        min_support: int,
        min_confidence: float,
        neighbours: int,
        engine: OfflineEngine = LOCAL,
    ) -> CooccurrenceRules:
        """``user``, ``item`` (N,): interactions sorted by user, then time. Pairs are the interactions at
        most ``window`` apart within one user's sequence, counted in both directions. ``engine`` counts the
        pairs of parts of the users where it runs jobs; a user is never split between parts, so the parts'
        counts add up to the whole's."""
        frame = pd.DataFrame({"user": user, "item": item})
        parts = [frame.iloc[rows] for rows in contiguous_parts(len(frame), engine.partitions, keys=user)]
        counted = engine.map_parts(_CountPairs(num_items, window), parts)
        occurrences = np.zeros(num_items, dtype=np.float32)
        for part in counted:
            occurrences += part["occurrences"]
        # Each item's rules depend on its own pairs only: the pairs go to a second round of parts by ranges
        # of their first item (X), of about equal numbers of pairs, where they are summed and selected.
        pairs_of_x = np.zeros(num_items, dtype=np.int64)
        for part in counted:
            pairs_of_x += np.bincount(part["rows"], minlength=num_items)
        ranges = contiguous_parts(int(pairs_of_x.sum()), engine.partitions)
        ends = np.cumsum(pairs_of_x)
        # an X's pairs are never split: a range ends after the X holding its last pair
        cuts = sorted({0, num_items, *(int(np.searchsorted(ends, r.stop, side="left")) + 1 for r in ranges)})
        cuts = [min(c, num_items) for c in cuts]
        groups = []
        for lo, hi in itertools.pairwise(dict.fromkeys(cuts)):
            pieces = []
            for part in counted:  # each part's pairs are sorted by X: a range is a slice
                a, b = np.searchsorted(part["rows"], [lo, hi])
                pieces.append((part["rows"][a:b], part["cols"][a:b], part["counts"][a:b]))
            if sum(len(p[0]) for p in pieces):
                groups.append(
                    pd.DataFrame(
                        {
                            "rows": np.concatenate([p[0] for p in pieces]),
                            "cols": np.concatenate([p[1] for p in pieces]),
                            "counts": np.concatenate([p[2] for p in pieces]),
                        }
                    )
                )
        job = _SelectRules(num_items, occurrences, min_support, min_confidence, neighbours)
        selected = engine.map_parts(job, groups)
        rows, cols, conf, supp = (
            np.concatenate([r[name] for r in selected] or [np.zeros(0, dtype)])
            for name, dtype in (
                ("rows", np.int64),
                ("cols", np.int64),
                ("conf", np.float32),
                ("supp", np.int32),
            )
        )
        indptr = np.searchsorted(rows, np.arange(num_items + 1)).astype(np.int64)
        return cls(indptr, cols.astype(np.int64), conf.astype(np.float32), supp.astype(np.int32))

    def rules_of(self, item: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Y items, confidences and supports of the rules X=item -> Y, strongest first."""
        lo, hi = self.indptr[item], self.indptr[item + 1]
        return self.indices[lo:hi], self.confidence[lo:hi], self.support[lo:hi]

    def pair_rules(self, sources: np.ndarray, targets: np.ndarray) -> PairRules:
        """The rules source -> target among ``sources`` (H,) and distinct ``targets`` (C,) item indices, as
        positions into both and their strengths. Costs O(rules of the sources + C log C), never
        O(num_items) nor O(H * C)."""
        sources = np.asarray(sources, dtype=np.int64)
        valid = (sources > 0) & (sources < self.num_items)
        if len(targets) == 0 or not valid.any():
            return PairRules.empty()
        position, entries = csr_row_entries(self.indptr, np.where(valid, sources, 0))
        neighbours = self.indices[entries]
        by_item = np.argsort(targets, kind="stable")
        sorted_targets = np.asarray(targets)[by_item]
        slot = np.minimum(np.searchsorted(sorted_targets, neighbours), len(targets) - 1)
        hit = sorted_targets[slot] == neighbours
        entries = entries[hit]
        return PairRules(position[hit], by_item[slot[hit]], self.confidence[entries], self.support[entries])

    def candidates(
        self, recent: np.ndarray, blocked: np.ndarray, count: int, recency_decay: float = 0.9
    ) -> ChannelCandidates:
        """Items implied by ``recent`` (most recent first): each Y scores the sum over X of
        confidence(X -> Y) * recency_decay ** position(X)."""
        recent = recent[(recent > 0) & (recent < self.num_items)]
        if len(recent) == 0 or count <= 0:
            return ChannelCandidates.empty(COOCCURRENCE)
        position, flat = csr_row_entries(self.indptr, recent)
        if len(flat) == 0:
            return ChannelCandidates.empty(COOCCURRENCE)
        weights = (recency_decay ** np.arange(len(recent), dtype=np.float32))[position]
        # sum per distinct target over the few hundred rules found, not over a catalogue-sized array:
        # a bincount of item ids costs O(num_items) per request
        found, inverse = np.unique(self.indices[flat], return_inverse=True)
        totals = np.bincount(inverse, weights=self.confidence[flat] * weights, minlength=len(found))
        positive = totals > 0
        found, totals = found[positive], totals[positive]
        order = np.argsort(-totals, kind="stable")  # ties: lower item index first
        return ChannelCandidates.top(
            found[order], totals[order], np.concatenate([blocked, recent]), count, COOCCURRENCE
        )

    def save(self, folder: Path) -> None:
        with open(folder / self.FILE, "wb") as fh:
            np.savez(
                fh, indptr=self.indptr, indices=self.indices, confidence=self.confidence, support=self.support
            )

    @classmethod
    def load(cls, folder: Path) -> CooccurrenceRules:
        with np.load(folder / cls.FILE, allow_pickle=False) as raw:
            return cls(raw["indptr"], raw["indices"], raw["confidence"], raw["support"])


class SegmentPopularity:
    """Top items per segment = gender code x age bucket (unknowns included, so a user who gives only one of
    them lands in a segment too). Scores are each item's share of its segment's interactions."""

    FILE = "segment_popularity.npz"
    NUM_SEGMENTS = (GENDER_UNKNOWN + 1) * (AGE_UNKNOWN + 1)

    def __init__(self, items: np.ndarray, scores: np.ndarray):
        self.items, self.scores = items, scores  # (S, M) each; 0-padded where a segment has fewer

    @staticmethod
    def segment_of(gender: np.ndarray | int, age: np.ndarray | int) -> np.ndarray | int:
        return gender * (AGE_UNKNOWN + 1) + age

    @classmethod
    def count(
        cls, gender: np.ndarray, age: np.ndarray, item: np.ndarray, num_items: int, top: int
    ) -> SegmentPopularity:
        """Per-interaction user gender/age codes and item indices (N,) -> the ``top`` items per segment.

        A segment with no interactions (e.g. unknown gender and age) falls back to overall popularity."""
        segment = cls.segment_of(gender, age)
        counts = sp.csr_matrix(
            (np.ones(len(item), dtype=np.float32), (segment, item)), shape=(cls.NUM_SEGMENTS, num_items)
        ).toarray()
        counts[:, 0] = 0
        overall = counts.sum(axis=0)
        top = min(top, num_items - 1)
        items = np.zeros((cls.NUM_SEGMENTS, top), dtype=np.int64)
        scores = np.zeros((cls.NUM_SEGMENTS, top), dtype=np.float32)
        for s in range(cls.NUM_SEGMENTS):
            row = counts[s] if counts[s].sum() > 0 else overall
            best = np.argsort(-row, kind="stable")[:top]
            best = best[row[best] > 0]
            items[s, : len(best)] = best
            scores[s, : len(best)] = row[best] / max(row.sum(), 1.0)
        return cls(items, scores)

    def candidates(self, gender: int, age: int, blocked: np.ndarray, count: int) -> ChannelCandidates:
        s = int(self.segment_of(gender, age))
        return ChannelCandidates.top(self.items[s], self.scores[s], blocked, count, SEGMENT_POPULAR)

    def save(self, folder: Path) -> None:
        with open(folder / self.FILE, "wb") as fh:
            np.savez(fh, items=self.items, scores=self.scores)

    @classmethod
    def load(cls, folder: Path) -> SegmentPopularity:
        with np.load(folder / cls.FILE, allow_pickle=False) as raw:
            return cls(raw["items"], raw["scores"])


class RecallChannels:
    """The channels beside the two-tower ANN, and how a user's candidates from all of them are merged."""

    def __init__(
        self,
        cooccurrence: CooccurrenceRules,
        segments: SegmentPopularity,
        config: RecallConfig,
        item_item: ItemItemChannel | None = None,
    ):
        self.cooccurrence = cooccurrence
        self.segments = segments
        self.config = config
        self.item_item = item_item

    def merge(
        self, two_tower: ChannelCandidates, history: np.ndarray, seen: np.ndarray, gender: int, age: int
    ) -> MergedCandidates:
        """Every channel's candidates (``lists``), de-duplicated in their priority order."""
        return merge_channels(self.lists(two_tower, history, seen, gender, age))

    def lists(
        self, two_tower: ChannelCandidates, history: np.ndarray, seen: np.ndarray, gender: int, age: int
    ) -> list[ChannelCandidates]:
        """The two-tower channel's candidates (unseen, best first), then the item-item channel's from
        everything the user has (``seen`` (S,)), when built, then co-occurrence from the user's recent items
        (``history`` (H,) most recent first), or popular-in-segment for a user with no history; ``seen``
        items are never proposed."""
        rc = self.config
        channels = [two_tower]
        if self.item_item is not None and len(seen):
            channels.append(self.item_item.candidates(seen, seen, rc.item_item_candidates))
        if len(history):
            recent = history[: rc.cooccurrence_recent_items]
            channels.append(self.cooccurrence.candidates(recent, seen, rc.cooccurrence_candidates))
        else:
            channels.append(self.segments.candidates(gender, age, seen, rc.segment_popular_candidates))
        return channels


def reciprocal_rank_fusion(
    channels: list[ChannelCandidates], weights: dict[str, float] | None = None, offset: float = 60.0
) -> np.ndarray:
    """The distinct items of ``channels`` (each best first) by reciprocal rank fusion (Cormack et al.,
    2009): an item scores the sum, over the channels that propose it, of weight(channel) / (offset + its
    rank there), so the lists interleave by rank whatever their score scales and an item several channels
    agree on rises. ``weights``: channel name -> weight, 1 when absent -> (C,) items, best first."""
    if not channels:
        return np.zeros(0, dtype=np.int64)
    items = np.concatenate([c.items for c in channels]).astype(np.int64)
    shares = np.concatenate(
        [(weights or {}).get(c.channel, 1.0) / (offset + 1.0 + np.arange(len(c.items))) for c in channels]
    )
    distinct, position = np.unique(items, return_inverse=True)
    totals = np.bincount(position.reshape(-1), weights=shares, minlength=len(distinct))
    keep = distinct > 0
    distinct, totals = distinct[keep], totals[keep]
    return distinct[np.argsort(-totals, kind="stable")]


def two_tower_order(
    items: np.ndarray, item_embeddings: np.ndarray, query: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates from any channel in two-tower order: items (C,), embeddings (N, D) of item indices
    1..N, query (D,) -> (order (C,) into ``items``, two-tower scores and the candidates' vectors (C, D), both
    in that order). Ranking features read the recall score and rank from this order, whichever channel
    proposed an item, and reuse the vectors rather than gather them from the catalogue a second time."""
    vectors = item_embeddings[items - 1]
    scores = vectors @ query
    order = np.argsort(-scores, kind="stable")
    return order, scores[order].astype(np.float32), vectors[order]
