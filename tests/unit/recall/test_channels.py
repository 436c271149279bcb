"""Recall channels: co-occurrence rules, segment popularity, and merging channels."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.recall.channels import (
    ChannelCandidates,
    CooccurrenceRules,
    SegmentPopularity,
    merge_channels,
    reciprocal_rank_fusion,
)


def test_cooccurrence_rules_have_exact_support_and_confidence():
    # sequences per user (time order): u1: 1 2 3, u2: 1 2, u3: 1 4
    user = np.array([1, 1, 1, 2, 2, 3, 3])
    item = np.array([1, 2, 3, 1, 2, 1, 4])
    rules = CooccurrenceRules.mine(user, item, 5, window=1, min_support=1, min_confidence=0.0, neighbours=10)
    ys, conf, support = rules.rules_of(1)
    assert ys.tolist() == [2, 4]  # 1 -> 2 twice (conf 2/3), 1 -> 4 once (conf 1/3); 1 -> 3 is 2 apart
    assert support.tolist() == [2, 1]
    assert conf.tolist() == pytest.approx([2 / 3, 1 / 3])
    strict = CooccurrenceRules.mine(user, item, 5, window=1, min_support=2, min_confidence=0.5, neighbours=10)
    assert strict.rules_of(1)[0].tolist() == [2] and strict.rules_of(4)[0].tolist() == []
    got = rules.candidates(np.array([1]), blocked=np.array([4]), count=5)
    assert got.items.tolist() == [2] and got.channel == "cooccurrence"


def test_pair_rules_equal_a_lookup_of_each_rule():
    rng = np.random.default_rng(11)
    user = np.sort(rng.integers(0, 40, 1500))
    item = rng.integers(1, 30, 1500)
    rules = CooccurrenceRules.mine(user, item, 30, window=3, min_support=2, min_confidence=0.0, neighbours=6)
    sources = np.array([4, 0, 17, 4, 29, 35])  # a repeat, padding and an index past the catalogue
    targets = rng.permutation(np.arange(1, 30))[:12]
    found = rules.pair_rules(sources, targets)
    got = {
        (h, c): (conf, supp)
        for h, c, conf, supp in zip(
            found.source.tolist(), found.target.tolist(), found.confidence.tolist(), found.support.tolist()
        )
    }
    assert len(got) == len(found.source)  # each (source, target) pair once
    expected = {}
    for h, x in enumerate(sources.tolist()):
        if not 0 < x < 30:
            continue
        for y, conf, supp in zip(*rules.rules_of(x)):
            if y in targets:
                expected[h, targets.tolist().index(y)] = (float(conf), int(supp))
    assert expected and {0, 3} <= {h for h, _ in expected}  # not vacuous; the repeated source twice
    assert got.keys() == expected.keys()
    for pair, (conf, supp) in expected.items():
        assert got[pair][0] == pytest.approx(conf, rel=1e-6) and got[pair][1] == supp
    assert len(rules.pair_rules(np.array([0]), np.array([], dtype=np.int64)).source) == 0
    assert len(rules.pair_rules(np.array([0, 35]), targets).source) == 0


def test_merge_keeps_the_first_channels_tag_and_score():
    merged = merge_channels(
        [
            ChannelCandidates(np.array([5, 3]), np.array([0.9, 0.8], dtype=np.float32), "two_tower"),
            ChannelCandidates(
                np.array([3, 7, 0]), np.array([0.5, 0.4, 0.3], dtype=np.float32), "cooccurrence"
            ),
        ]
    )
    assert merged.items.tolist() == [5, 3, 7]
    assert merged.names().tolist() == ["two_tower", "two_tower", "cooccurrence"]
    assert merged.channel_scores.tolist() == pytest.approx([0.9, 0.8, 0.4])


def test_segment_popularity_is_per_gender_and_age_with_an_overall_fallback():
    gender = np.array([0, 0, 0, 1, 1])
    age = np.array([2, 2, 2, 3, 3])
    item = np.array([1, 1, 2, 3, 3])
    seg = SegmentPopularity.count(gender, age, item, num_items=4, top=3)
    assert seg.candidates(0, 2, np.array([]), 3).items.tolist() == [1, 2]
    assert seg.candidates(1, 3, np.array([]), 3).items.tolist() == [3]
    assert seg.candidates(2, 7, np.array([1]), 3).items.tolist() == [3, 2]  # empty segment: overall


def test_reciprocal_rank_fusion_sums_ranks_over_channels_by_weight():
    def channel(items: list[int], name: str) -> ChannelCandidates:
        return ChannelCandidates(np.array(items), np.linspace(1, 0, len(items), dtype=np.float32), name)

    lists = [channel([10, 11, 12, 13], "two_tower"), channel([20, 11, 21], "cooccurrence")]
    # 11 is second in both lists: 2 / 62 beats 10's and 20's 1 / 61; then ranks interleave
    assert reciprocal_rank_fusion(lists).tolist() == [11, 10, 20, 12, 21, 13]
    favoured = reciprocal_rank_fusion(lists, {"two_tower": 2.0})
    assert favoured.tolist() == [11, 10, 12, 13, 20, 21]
    assert reciprocal_rank_fusion(lists, {"cooccurrence": 0.0}).tolist()[:4] == [10, 11, 12, 13]
    assert reciprocal_rank_fusion([]).tolist() == []
