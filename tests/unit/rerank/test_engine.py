"""The rules engine over a ranked list: every rule kind, their order, time windows and explanations."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from cascade.core.errors import ConfigError
from cascade.rerank.catalogue import ItemAttributes
from cascade.rerank.config import RerankConfig
from cascade.rerank.engine import RuleEngine
from cascade.rerank.request import RerankRequest
from cascade.rerank.rules_file import UserTraits, parse_rules

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp()
GENRES = ("Action", "Comedy", "Drama")


@pytest.fixture
def catalogue() -> ItemAttributes:
    """Items 1-8: genres, years and qualities chosen per test; item 9 has no year and no ratings."""
    genres = np.array(
        [[0, 0], [1, 0], [2, 0], [2, 3], [3, 0], [1, 2], [2, 0], [3, 1], [2, 0], [3, 0]], dtype=np.int64
    )
    years = np.array([0, 1995, 2024, 2010, 1980, 2026, 2000, 1999, 2025, 0])
    quality = np.array([np.nan, 4.1, 2.5, 3.8, 3.2, 4.5, 3.0, 2.9, 4.0, np.nan])
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(9, 4)).astype(np.float32)
    vectors[6] = vectors[5]  # items 6 and 7 are the same film to the two-tower model
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index_of = {f"m{i}": i for i in range(1, 10)}
    return ItemAttributes(index_of.get, genres, GENRES, years, quality, vectors)


def engine(catalogue, text: str = "", **config) -> RuleEngine:
    return RuleEngine(RerankConfig(**config), catalogue, parse_rules(text) if text else None)


ITEMS = np.arange(1, 10)
SCORES = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0], dtype=np.float32)
NONE = np.zeros(0, dtype=np.int64)
AT_NOW = RerankRequest(at=NOW)


def test_without_rules_it_filters_dedupes_and_keeps_the_top_k_with_the_rankers_scores(catalogue):
    items = np.array([5, 3, 9, 3, 7, 0, 2])
    scores = np.array([0.9, 0.2, 0.8, 0.95, 0.7, 1.0, 0.8], dtype=np.float32)
    out = engine(catalogue).apply(
        items, scores, RerankRequest(np.array([9]), np.array([7]), NOW), 3, explain=True
    )
    assert out.items.tolist() == [3, 5, 2]  # 9 seen, 7 excluded, 0 padding, 3 kept once at its best
    assert out.scores.tolist() == pytest.approx([0.95, 0.9, 0.8])
    assert items[out.positions].tolist() == out.items.tolist()
    assert out.removed == {"seen": 1, "exclude": 1}
    keep_seen = engine(catalogue, filter_seen=False).apply(
        items, scores, RerankRequest(np.array([9]), NONE, NOW), 10
    )
    assert 9 in keep_seen.items


def test_filters_remove_what_they_name_and_count_it(catalogue):
    rules = """
[[rules]]
kind = "blocklist"
name = "legal"
items = ["m1", "not-in-catalogue"]
genres = ["Drama"]
[[rules]]
kind = "min_quality"
min_mean_rating = 3.5
"""
    out = engine(catalogue, rules).apply(ITEMS, SCORES, AT_NOW, 9, explain=True)
    # Drama: 3, 4, 7, 9 and item 1 by id; then quality < 3.5: 2 (2.5), 6 (3.0)
    assert out.items.tolist() == [5, 8]
    assert out.removed == {"blocklist:legal": 5, "min_quality": 2}
    unrated = engine(catalogue, '[[rules]]\nkind = "min_quality"\nmin_mean_rating = 5')
    assert unrated.apply(ITEMS, SCORES, AT_NOW, 9).items.tolist() == [9]  # no ratings: kept


def test_genre_filter_and_release_window(catalogue):
    include = '[[rules]]\nkind = "genre_filter"\ninclude = ["Comedy"]\nexclude = ["Drama"]'
    assert engine(catalogue, include).apply(ITEMS, SCORES, AT_NOW, 9).items.tolist() == [2, 5, 6, 8]
    window = '[[rules]]\nkind = "release_window"\nmin_year = 1990\nmax_age_years = 20'
    # 2024, 2010, 2026, 2000... as of 2026-12: at most 20 years old means released 2006 or later; 9 unknown
    assert engine(catalogue, window).apply(ITEMS, SCORES, AT_NOW, 9).items.tolist() == [
        2,
        3,
        5,
        8,
        9,
    ]


def test_boosts_multiply_a_common_scale_and_say_so(catalogue):
    rules = """
[[rules]]
kind = "boost"
name = "action-week"
genres = ["Action"]
factor = 3.0
"""
    out = engine(catalogue, rules).apply(ITEMS, SCORES, AT_NOW, 3, explain=True)
    # on [0.1, 1]: item 1 (Action) 1.0 x 3; item 5 (Action|Comedy) 0.55 x 3 and item 7 (Drama|Action)
    # 0.325 x 3 pass item 2 (0.8875)
    assert out.items.tolist() == [1, 5, 7]
    assert out.scores.tolist() == pytest.approx([3.0, 1.65, 0.975])
    assert out.fired == [["boost:action-week x3"]] * 3
    assert out.base_scores.tolist() == [9.0, 5.0, 3.0]
    negative = engine(catalogue, rules).apply(ITEMS, SCORES - 100, AT_NOW, 3)
    assert negative.items.tolist() == [1, 5, 7]  # the same whatever the ranker's scale


def test_a_rule_outside_its_time_window_does_nothing(catalogue):
    rules = """
[[rules]]
kind = "blocklist"
items = ["m1"]
starts = 2026-12-02T00:00:00Z
"""
    assert engine(catalogue, rules).apply(ITEMS, SCORES, AT_NOW, 1).items.tolist() == [1]
    later = NOW + 2 * 86400
    assert engine(catalogue, rules).apply(ITEMS, SCORES, RerankRequest(at=later), 1).items.tolist() == [2]


def test_freshness_favours_recent_releases_with_a_half_life(catalogue):
    rules = '[[rules]]\nkind = "freshness"\nhalf_life_years = 1\nweight = 1.0'
    out = engine(catalogue, rules).apply(ITEMS, SCORES, AT_NOW, 9, explain=True)
    by_item = dict(zip(out.items.tolist(), out.fired))
    assert by_item[9] == []  # unknown year: no boost
    factor = {item: float(why[0].split(" x")[1]) for item, why in by_item.items() if why}
    assert factor[5] > factor[8] > factor[2]  # released 2026, 2025, 2024
    assert by_item[3] == []  # 2010: sixteen half-lives old, x1.00001, which explanations leave out
    assert factor[8] == pytest.approx(1 + 2**-1.42, rel=0.01)  # mid-2025 to December 2026: 1.42 years


def test_cap_keeps_at_most_n_of_a_genre_in_the_capped_positions(catalogue):
    rules = '[[rules]]\nkind = "cap"\nmax_per_value = 1\nwithin = 3'
    out = engine(catalogue, rules).apply(ITEMS, SCORES, AT_NOW, 5, explain=True)
    # 1 Action; 2 Comedy; 3 Comedy|Drama waits; 4 Drama; past position 3 the cap is off: 3, then 5
    assert out.items.tolist() == [1, 2, 4, 3, 5]
    whole = engine(catalogue, '[[rules]]\nkind = "cap"\nmax_per_value = 1').apply(
        ITEMS, SCORES, AT_NOW, 5, explain=True
    )
    assert whole.items.tolist() == [1, 2, 4]  # one Action, one Comedy, one Drama; nothing else fits
    # the list ended short, so every item held back counts, under its first genre that was full: 3, 6, 8
    # Comedy; 5 (Action|Comedy) Action; 7 (Drama|Action) and 9 Drama
    assert whole.removed == {"cap:genre=Comedy": 3, "cap:genre=Action": 1, "cap:genre=Drama": 2}
    assert out.removed == {}  # item 3 only waited


def test_mmr_trades_relevance_for_diversity_and_lambda_zero_is_the_ranking(catalogue):
    plain = engine(catalogue, '[[rules]]\nkind = "mmr"\nlambda = 0.0').apply(ITEMS, SCORES, AT_NOW, 4)
    assert plain.items.tolist() == [1, 2, 3, 4]
    scores = SCORES.copy()
    scores[5] = 8.5  # item 6 second best, and item 7 (its twin) third
    scores[6] = 8.4
    top = engine(catalogue).apply(ITEMS, scores, AT_NOW, 3).items.tolist()
    assert top == [1, 6, 7]
    out = engine(catalogue, '[[rules]]\nkind = "mmr"\nlambda = 0.5').apply(
        ITEMS, scores, AT_NOW, 3, explain=True
    )
    assert 6 in out.items and 7 not in out.items.tolist()  # the twin is never worth its similarity
    vectors = catalogue.vectors_of(out.items)
    similarity = vectors @ vectors.T
    assert similarity[np.triu_indices(3, 1)].max() < 0.999
    assert any(why and why[0].startswith("mmr (#") and why[0].endswith(" by score)") for why in out.fired)


def test_pins_put_campaign_items_in_place_unless_filtered(catalogue):
    rules = """
[[rules]]
kind = "pin"
name = "campaign-7"
item = "m8"
position = 2
[[rules]]
kind = "blocklist"
items = ["m9"]
[[rules]]
kind = "pin"
name = "blocked"
item = "m9"
position = 1
"""
    items = np.array([1, 2, 3])  # m8 was not even a candidate
    out = engine(catalogue, rules).apply(items, SCORES[:3], AT_NOW, 3, explain=True)
    assert out.items.tolist() == [1, 8, 2]
    assert out.positions.tolist() == [0, -1, 1]
    assert out.fired[1] == ["pin:campaign-7@2"]
    assert out.removed == {"pin:blocked": 1}
    seen = engine(catalogue, rules).apply(items, SCORES[:3], RerankRequest(np.array([8]), NONE, NOW), 3)
    assert seen.items.tolist() == [1, 2, 3]  # a pinned item the user has seen is not shown


def test_compiling_refuses_unknown_genres_and_pinned_items_and_names_the_rule(catalogue):
    with pytest.raises(ConfigError, match=r"rules\[0\] \(boost:x\)\.genres: unknown genre 'Comdy'"):
        engine(catalogue, '[[rules]]\nkind = "boost"\nname = "x"\nfactor = 2\ngenres = ["Comdy"]')
    with pytest.raises(ConfigError, match=r"rules\[0\] \(pin\)\.item: 'nope'"):
        engine(catalogue, '[[rules]]\nkind = "pin"\nitem = "nope"\nposition = 1')


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '[[rules]]\nkind = "boost"\nname = "b"\nfactor = 0\ngenres = ["Action"]',
            r"rules\[0\] \(name 'b', kind 'boost'\)\.factor",
        ),
        (
            '[[rules]]\nkind = "cap"\nmax_per_value = 1\ncolour = "red"',
            r"rules\[0\] \(kind 'cap'\)\.colour: Extra inputs",
        ),
        ('[[rules]]\nkind = "shuffle"', r"rules\[0\] \(kind 'shuffle'\).*does not match"),
        ('[[rules]]\nkind = "boost"\nfactor = 2', r"a boost needs items or genres"),
        (
            '[[rules]]\nkind = "pin"\nitem = "m1"\nposition = 1\n'
            "starts = 2026-12-02T00:00:00Z\nends = 2026-12-01T00:00:00Z",
            "ends must be after starts",
        ),
        ("rules = [", "not valid TOML"),
        ('verison = "1"', r"verison: Extra inputs"),
    ],
)
def test_an_invalid_rules_file_is_refused_naming_the_rule_and_field(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_rules(text)


def test_the_version_is_the_files_own_or_a_content_hash():
    assert parse_rules('version = "spring-sale"').version == "spring-sale"
    a, b = (
        parse_rules('[[rules]]\nkind = "mmr"\nlambda = 0.1'),
        parse_rules('[[rules]]\nkind = "mmr"\nlambda = 0.2'),
    )
    assert a.version.startswith("sha256:") and a.version != b.version


def test_every_rule_at_once_on_no_candidates_and_on_short_lists(catalogue):
    every = """
[[rules]]
kind = "blocklist"
items = ["m1"]
[[rules]]
kind = "boost"
genres = ["Comedy"]
factor = 1.5
[[rules]]
kind = "freshness"
half_life_years = 5
[[rules]]
kind = "cap"
max_per_value = 2
[[rules]]
kind = "mmr"
lambda = 0.3
[[rules]]
kind = "pin"
item = "m9"
position = 5
"""
    rules = engine(catalogue, every)
    empty = rules.apply(NONE, np.zeros(0, dtype=np.float32), AT_NOW, 5, explain=True)
    assert empty.items.tolist() == [9] and empty.positions.tolist() == [-1]  # only the pin: position 5 of 1
    short = rules.apply(ITEMS[:3], SCORES[:3], AT_NOW, 2, explain=True)
    assert len(short.items) == 2 and 9 not in short.items  # the pin's position is past k
    assert len(short.fired) == 2 and np.isfinite(short.base_scores).all()


SEGMENTED = """
[[segments]]
name = "new"
new_user = true
[[segments]]
name = "young-women"
genders = ["F"]
max_age = 30
[[segments]]
name = "gold"
tiers = ["A"]
[[rules]]
kind = "blocklist"
name = "new-users"
items = ["m1"]
segments = ["new"]
[[rules]]
kind = "genre_filter"
name = "home"
exclude = ["Drama"]
surfaces = ["home"]
[[rules]]
kind = "boost"
name = "comedy"
genres = ["Comedy"]
factor = 100
segments = ["young-women", "gold"]
"""


def test_segments_and_surfaces_choose_each_requests_rules(catalogue):
    rules = engine(catalogue, SEGMENTED)

    def top(k=3, **request):
        return rules.apply(ITEMS, SCORES, RerankRequest(at=NOW, **request), k).items.tolist()

    returning = UserTraits(new_user=False, gender="M", age=40)
    assert top(user=returning) == [1, 2, 3]
    assert top(user=UserTraits(new_user=True)) == [2, 3, 4]  # the new users' blocklist
    assert top(user=returning, surface="home") == [1, 2, 5]  # no Drama on the home surface
    assert top(user=UserTraits(new_user=False, gender="F", age=25)) == [2, 3, 5]  # comedies first
    assert top(user=UserTraits(new_user=False, gender="F", age=40)) == [1, 2, 3]
    assert top(user=UserTraits(new_user=False, gender="F", age=-1)) == [1, 2, 3]  # unknown age: not in
    assert top(user=UserTraits(new_user=False, tier="A")) == [2, 3, 5]
    assert rules.segments_of(UserTraits(new_user=True, gender="F", age=20, tier="A")) == {
        "new",
        "young-women",
        "gold",
    }


def test_the_requests_genres_filter_the_list_with_or_without_rules(catalogue):
    request = RerankRequest(  # Comedy, no Drama
        at=NOW, include_genres=(2,), exclude_genres=(3,), user=UserTraits(new_user=False)
    )
    for rules in (engine(catalogue), engine(catalogue, SEGMENTED)):
        out = rules.apply(ITEMS, SCORES, request, 9, explain=True)
        assert out.items.tolist() == [2, 5, 6, 8]
        assert out.removed == {"request:genres": 5}


def test_the_seen_rule_removes_items_by_event_type_and_age(catalogue):
    day = 86400
    history = np.array([[1, 1, NOW - day], [2, 4, NOW - 100 * day], [3, 1, NOW - 30 * day]], dtype=np.int64)
    request = RerankRequest(at=NOW, history=history)
    recent_views = '[[rules]]\nkind = "seen"\nevent_types = ["view"]\nmax_age_days = 7'
    out = engine(catalogue, recent_views).apply(ITEMS, SCORES, request, 3, explain=True)
    assert out.items.tolist() == [2, 3, 4] and out.removed == {"seen": 1}
    purchases = '[[rules]]\nkind = "seen"\nname = "bought"\nevent_types = ["purchase"]'
    out = engine(catalogue, purchases).apply(ITEMS, SCORES, request, 3, explain=True)
    assert out.items.tolist() == [1, 3, 4] and out.removed == {"seen:bought": 1}
    anything = engine(catalogue, '[[rules]]\nkind = "seen"').apply(ITEMS, SCORES, request, 3)
    assert anything.items.tolist() == [4, 5, 6]
    assert engine(catalogue, recent_views).apply(ITEMS, SCORES, AT_NOW, 3).items.tolist() == [1, 2, 3]


# decades: 1 1990s, 2 2020s, 3 2010s, 4 1980s, 5 2020s, 6 2000s, 7 1990s, 8 2020s, 9 unknown
BY_DECADE = np.array([8.0, 9.0, 7.0, 6.0, 8.9, 5.0, 4.0, 8.8, 3.0], dtype=np.float32)  # 2, 5, 8 first


def test_spacing_keeps_items_of_one_value_apart_in_a_sliding_window(catalogue):
    rules = '[[rules]]\nkind = "spacing"\nattribute = "decade"\nwindow = 3'
    out = engine(catalogue, rules).apply(ITEMS, BY_DECADE, AT_NOW, 7, explain=True)
    # 2; 5 and 8 (2020s) wait two positions; 1, 3; then 5; 4, 6; then 8
    assert out.items.tolist() == [2, 1, 3, 5, 4, 6, 8]
    decades = [catalogue.values("decade", item) for item in out.items.tolist()]
    assert all(decades[i] != decades[j] for i in range(7) for j in range(i + 1, min(i + 3, 7)))
    assert out.fired[3] == ["spacing:decade=2020s (#2 by score)"]
    assert out.removed == {}  # everything held back was placed later


def test_a_cap_on_another_attribute(catalogue):
    rules = '[[rules]]\nkind = "cap"\nattribute = "decade"\nmax_per_value = 1'
    out = engine(catalogue, rules).apply(ITEMS, BY_DECADE, AT_NOW, 6, explain=True)
    assert out.items.tolist() == [2, 1, 3, 4, 6, 9]  # 9 has no year: no decade to cap
    assert out.removed == {"cap:decade=2020s": 2, "cap:decade=1990s": 1}


EXPLORE = '[[rules]]\nkind = "explore"\nshare = 0.5\ntemperature = 0.5\npool = 5'


def test_exploration_is_seeded_and_its_propensities_are_the_draws_frequencies(catalogue):
    rules = engine(catalogue, EXPLORE)
    first = rules.apply(ITEMS, SCORES, RerankRequest(at=NOW, seed=7), 5, explain=True)
    again = rules.apply(ITEMS, SCORES, RerankRequest(at=NOW, seed=7), 5, explain=True)
    assert first.items.tolist() == again.items.tolist()
    assert first.propensities.tolist() == again.propensities.tolist()
    assert ((first.propensities > 0) & (first.propensities <= 1)).all()
    explored = [why for why in first.fired if any(w.startswith("explore (p=") for w in why)]
    assert (
        len(explored) == sum(item != planned for item, planned in zip(first.items.tolist(), [1, 2, 3, 4, 5]))
        or explored
    )
    # at the first position, P(item) = share x softmax(item) + (1 - share) x [item is the best]
    draws = 4000
    counts: dict[int, int] = {}
    propensity: dict[int, float] = {}
    for seed in range(draws):
        out = rules.apply(ITEMS, SCORES, RerankRequest(at=NOW, seed=seed), 3)
        head = int(out.items[0])
        counts[head] = counts.get(head, 0) + 1
        propensity[head] = float(out.propensities[0])
        assert len(set(out.items.tolist())) == 3
    assert set(counts) <= {1, 2, 3, 4, 5}  # drawn from the best 5 only
    for item, count in counts.items():
        assert count / draws == pytest.approx(propensity[item], abs=0.03)
    assert counts[1] / draws > 0.5  # the best item keeps its place unless drawn over
    plain = engine(catalogue).apply(ITEMS, SCORES, AT_NOW, 3)
    assert plain.propensities.tolist() == [1.0, 1.0, 1.0]


def test_a_pin_is_capped_per_user_and_placed_once_across_pages(catalogue):
    rules = engine(
        catalogue,
        '[[rules]]\nkind = "pin"\nname = "c7"\nitem = "m8"\nposition = 4\nmax_impressions = 2',
    )
    shown = rules.apply(ITEMS[:3], SCORES[:3], RerankRequest(at=NOW, impressions={"c7": 1}), 5)
    assert shown.items.tolist() == [1, 2, 3, 8] and [p.name for p in shown.shown_pins] == ["c7"]
    capped = rules.apply(ITEMS[:3], SCORES[:3], RerankRequest(at=NOW, impressions={"c7": 2}), 5, True)
    assert capped.items.tolist() == [1, 2, 3] and capped.shown_pins == ()
    assert capped.removed == {"pin:c7": 1}
    # a second page of 3 after 3 items: position 4 is its first
    page_two = rules.apply(ITEMS[3:6], SCORES[3:6], RerankRequest(at=NOW, offset=3), 3)
    assert page_two.items.tolist() == [8, 4, 5]
    served = np.array([1, 2, 3, 8, 4, 5])  # pages leave out what earlier pages served
    page_three = rules.apply(ITEMS, SCORES, RerankRequest(exclude=served, at=NOW, offset=6), 3)
    assert page_three.items.tolist() == [6, 7, 9]


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[rules]]\nkind = "mmr"\nlambda = 0.1\nsegments = ["vip"]', r"undeclared segment\(s\) \['vip'\]"),
        ('[[rules]]\nkind = "spacing"\nwindow = 2\nmax_per_value = 2', "max_per_value must be below window"),
        (
            '[[rules]]\nkind = "pin"\nitem = "m1"\nposition = 1\nmax_impressions = 3',
            "a pin with max_impressions needs a name",
        ),
        ('[[rules]]\nkind = "seen"\nevent_types = ["like"]', r"rules\[0\] \(kind 'seen'\)\.event_types\.0"),
        ('[[segments]]\nname = "a"\n[[segments]]\nname = "a"', "a name is declared twice"),
        ('[[rules]]\nkind = "explore"\nshare = 0', r"rules\[0\] \(kind 'explore'\)\.share"),
    ],
)
def test_new_kinds_validate(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_rules(text)


def test_deleted_items_are_never_served_with_or_without_rules(catalogue):
    deleted = np.zeros(catalogue.num_items, dtype=bool)
    deleted[[1, 8]] = True
    pin = '[[rules]]\nkind = "pin"\nitem = "m8"\nposition = 1'
    for text in ("", pin):
        rules = RuleEngine(RerankConfig(), catalogue, parse_rules(text) if text else None, deleted)
        out = rules.apply(ITEMS, SCORES, AT_NOW, 9, explain=True)
        assert 1 not in out.items and 8 not in out.items and len(out.items) == 7
        assert out.removed["deleted"] == 2
        similar = rules.filter(ITEMS, SCORES, AT_NOW, 3, explain=True)
        assert similar.items.tolist() == [2, 3, 4] and similar.removed == {"deleted": 2}


def test_popularity_favours_the_most_interacted_items_on_a_log_scale(catalogue):
    import dataclasses

    popular = dataclasses.replace(catalogue, popularity=np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1000]))
    rules = '[[rules]]\nkind = "popularity"\nname = "crowd"\nweight = 20'
    out = engine(popular, rules).apply(ITEMS, SCORES, AT_NOW, 3, explain=True)
    assert out.items.tolist() == [9, 1, 2]  # the last by score, most popular by far, comes first
    assert out.fired[0][0].startswith("popularity:crowd x")
    with pytest.raises(ConfigError, match="popularity needs item popularity"):
        engine(catalogue, rules)  # a catalogue that does not know popularity


def test_a_promotion_slot_takes_the_best_promoted_candidate_unless_one_is_above_it(catalogue):
    premium = """
[[rules]]
kind = "slot"
name = "premium"
position = 2
min_mean_rating = 4.0
segments = ["gold"]
[[segments]]
name = "gold"
tiers = ["A"]
"""
    rules = engine(catalogue, premium)
    gold = RerankRequest(at=NOW, user=UserTraits(tier="A"))
    # without item 1 (4.1), the best-scored promoted candidate is item 5 (4.5; 4th by score; item 8's 4.0
    # scores lower): it moves to position 2
    out = rules.apply(ITEMS[1:], SCORES[1:], gold, 4, explain=True)
    assert out.items.tolist() == [2, 5, 3, 4] and out.fired[1] == ["slot:premium@2"]
    assert SCORES[1:][out.positions].tolist() == [8.0, 5.0, 7.0, 6.0]  # its row in the ranked input
    # item 1 (4.1) is first already: the slot keeps its item
    assert rules.apply(ITEMS, SCORES, gold, 4).items.tolist() == [1, 2, 3, 4]
    # another tier: no slot
    assert rules.apply(ITEMS[1:], SCORES[1:], AT_NOW, 4).items.tolist() == [2, 3, 4, 5]
    # nothing promotable among the candidates: the slot keeps its item and says so
    plain = rules.apply(np.array([2, 3, 4]), SCORES[:3], gold, 3, explain=True)
    assert plain.items.tolist() == [2, 3, 4] and plain.removed == {"slot:premium": 1}
    with pytest.raises(ConfigError, match="a slot needs items, genres or min_mean_rating"):
        parse_rules('[[rules]]\nkind = "slot"\nposition = 1')
