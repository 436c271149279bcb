"""Business rules over the real service: a rules file served, explained, hot-reloaded, and a bad one refused
while the rules before it keep serving."""

from __future__ import annotations

import os
import time

import pytest

from cascade.serving.client import CascadeClient
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from cascade.serving.server import CascadeServer
from tests.helpers import PSEUDONYMS, USER, item_ids

RULES = """
version = "test-1"

[[rules]]
kind = "blocklist"
name = "no-drama"
genres = ["Drama"]

[[rules]]
kind = "pin"
name = "campaign-7"
item = "{pinned}"
position = 1
"""


def write_atomically(path, text: str) -> None:
    """As an operator's deploy tool should: the server never reads a half-written file."""
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    os.replace(partial, path)


def genres_of(dataset, items: list[int]) -> list[str]:
    catalogue = dataset.items.set_index("item_id")
    return [catalogue.loc[item, "genres"] for item in items]


@pytest.fixture
def ruled(config, built, server, redis_server, dataset, tmp_path):
    """A second server on the same models and Redis, with a rules file; and an item the user has not seen,
    is not Drama, and the pipeline would not put first, to pin."""
    _, port = server
    with CascadeClient(f"127.0.0.1:{port}") as plain:
        ranked = item_ids(plain.recommend(USER, k=40))
    genres = genres_of(dataset, ranked)
    pinned = next(item for item, g in zip(ranked[10:], genres[10:]) if "Drama" not in g.split("|"))
    path = tmp_path / "rules.toml"
    write_atomically(path, RULES.format(pinned=pinned))
    cfg = config.model_copy(
        update={
            "rerank": config.rerank.model_copy(update={"rules_path": path}),
            "serving": config.serving.model_copy(update={"metrics_port": None}),
        }
    )
    srv = CascadeServer(cfg, RedisFeatureStore.from_url(redis_server.url, pseudonyms=PSEUDONYMS))
    ruled_port = srv.start()
    srv.load_models()
    srv.watch_artifacts()  # every reload_interval_s: the artifacts, and the rules file
    try:
        with CascadeClient(f"127.0.0.1:{ruled_port}") as client:
            yield srv, client, path, pinned
    finally:
        srv.stop(drain_s=0)


def wait_for_rules(client, version: str, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        reply = client.recommend(USER, k=10, explain=True)
        if reply.model_versions.rules == version or time.monotonic() > deadline:
            return reply
        time.sleep(0.1)


def test_rules_are_served_and_explained(ruled, dataset):
    _, client, _, pinned = ruled
    reply = client.recommend(USER, k=10, explain=True)
    items = item_ids(reply)
    assert reply.model_versions.rules == "test-1"
    assert items[0] == pinned and reply.items[0].source != "pin"  # recalled, then pinned: its channel stays
    assert list(reply.items[0].explanation.rules) == ["pin:campaign-7@1"]
    assert not any("Drama" in g.split("|") for g in genres_of(dataset, items))
    assert reply.removed_by_rule["blocklist:no-drama"] > 0
    excluded = client.recommend(USER, k=10, explain=True, exclude_item_ids=[items[1]])
    assert items[1] not in item_ids(excluded) and excluded.removed_by_rule["exclude"] == 1
    for item in reply.items[1:]:
        assert item.explanation.ranker_score == item.explanation.ranker_score  # a real score, not NaN
    # scores on the common scale, ordered, the pin taking its place's score
    scores = [item.score for item in reply.items]
    assert scores == sorted(scores, reverse=True) and 0.1 <= scores[-1] <= 1.0
    quiet = client.recommend(USER, k=10)
    assert item_ids(quiet) == items
    assert not any(item.HasField("explanation") for item in quiet.items) and not quiet.removed_by_rule


def test_a_changed_rules_file_is_picked_up_and_a_bad_one_refused(ruled, dataset):
    srv, client, path, _ = ruled
    failures = srv.metrics.rules_reload_failures
    write_atomically(path, 'version = "test-2"\n[[rules]]\nkind = "genre_filter"\ninclude = ["Comedy"]\n')
    reply = wait_for_rules(client, "test-2")
    assert reply.model_versions.rules == "test-2"
    assert all("Comedy" in g.split("|") for g in genres_of(dataset, item_ids(reply)))
    assert "blocklist:no-drama" not in reply.removed_by_rule
    for bad in (
        'version = "test-3"\n[[rules]]\nkind = "boost"\nfactor = -1\ngenres = ["Comedy"]\n',  # invalid
        'version = "test-4"\n[[rules]]\nkind = "boost"\nfactor = 2\ngenres = ["Comedie"]\n',  # unknown genre
    ):
        before = failures._value.get()
        write_atomically(path, bad)
        deadline = time.monotonic() + 10
        while failures._value.get() == before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert failures._value.get() == before + 1  # refused once, not at every poll
        time.sleep(0.5)
        assert failures._value.get() == before + 1
        kept = client.recommend(USER, k=10, explain=True)
        assert kept.model_versions.rules == "test-2"
        assert all("Comedy" in g.split("|") for g in genres_of(dataset, item_ids(kept)))
    path.unlink()  # a file that disappears is refused like a bad one
    time.sleep(0.5)
    assert client.recommend(USER, k=10).model_versions.rules == "test-2"


def test_the_shipped_rules_files_compile_against_movielens_and_serve(ruled):
    from pathlib import Path

    from cascade.rerank.rules_file import load_rules

    srv, client, _, _ = ruled
    shipped = Path(__file__).parents[2] / "rules"
    default = load_rules(shipped / "default.toml")
    srv.service.require_pipeline().use_rules(default)
    reply = client.recommend(USER, k=20, explain=True)
    assert reply.model_versions.rules == default.version and len(reply.items) == 20
    example = load_rules(shipped / "example.toml")
    engine = srv.service.require_pipeline().use_rules(example)
    kinds = {rule.kind for rule in example.rules}
    assert engine.has_rules and kinds == {  # one rule of every kind
        "seen", "blocklist", "genre_filter", "min_quality", "release_window", "boost", "freshness", "cap",
        "spacing", "mmr", "explore", "pin", "popularity", "slot",
    }  # fmt: skip
    for surface in ("", "home"):
        reply = client.recommend(USER, k=20, explain=True, surface=surface)
        assert reply.model_versions.rules == example.version and len(reply.items) == 20
        assert any(
            rule.startswith(("boost:", "freshness", "mmr"))
            for item in reply.items
            for rule in item.explanation.rules
        )
    new_user = client.recommend(424242, k=20, explain=True)
    assert len(new_user.items) == 20
    # the tiers' rule sets: a promotion slot of acclaimed titles for tier A, popular items and more
    # exploration for tier D
    tiers = {user: client.customer_profile(user).value.tier for user in range(100, 160)}
    gold = next(user for user, tier in tiers.items() if tier == "A")
    reply = client.recommend(gold, k=10, explain=True)
    attributes = srv.service.require_pipeline().models.attributes
    top_two = [attributes.quality[attributes.item_index(item.item_id)] for item in reply.items[:2]]
    assert max(top_two) >= 4.0  # an acclaimed title in the first two: the slot's or the ranking's own
    developing = next(user for user, tier in tiers.items() if tier == "D")
    draws = [client.recommend(developing, k=10, explain=True, request_id=f"d{n}") for n in range(6)]
    rules = {rule.split(" ")[0] for reply in draws for item in reply.items for rule in item.explanation.rules}
    assert "popularity:crowd-favourites" in rules and any(
        r.startswith("explore:tier-d-discover") for r in rules
    )


CONTEXT_RULES = """
version = "context-1"

[[segments]]
name = "returning"
new_user = false

[[rules]]
kind = "genre_filter"
name = "home-comedies"
include = ["Comedy"]
surfaces = ["home"]

[[rules]]
kind = "explore"
share = 0.5
temperature = 1.0
surfaces = ["discover"]

[[rules]]
kind = "pin"
name = "c9"
item = "{pinned}"
position = 2
max_impressions = 2
segments = ["returning"]
"""


def test_surfaces_segments_exploration_and_capped_pins_over_grpc(ruled, dataset, redis_server):
    from cascade.rerank.rules_file import parse_rules

    srv, client, _, pinned = ruled
    srv.service.require_pipeline().use_rules(parse_rules(CONTEXT_RULES.format(pinned=pinned)))
    store = RedisFeatureStore.from_url(redis_server.url, pseudonyms=PSEUDONYMS)
    home = client.recommend(USER, k=10, surface="home")
    assert all("Comedy" in g.split("|") for g in genres_of(dataset, item_ids(home)) if g)
    # the pin is for returning users, twice each: USER is one, a new user is not
    assert int(pinned) not in item_ids(client.recommend(424242, k=10))
    for shown in (1, 2):
        reply = client.recommend(USER, k=10, explain=True)
        assert item_ids(reply)[1] == int(pinned)
        assert "pin:c9@2" in reply.items[1].explanation.rules
        deadline = time.monotonic() + 5  # counted after the answer, off the request's path
        while store.impressions(USER, ["c9"])["c9"] < shown and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.impressions(USER, ["c9"]) == {"c9": shown}
    capped = client.recommend(USER, k=10, explain=True)
    assert int(pinned) not in item_ids(capped)[:2] and capped.removed_by_rule["pin:c9"] == 1
    # exploration on one surface: seeded by the request id, with propensities below 1 for its draws
    draws = [client.recommend(USER, k=10, surface="discover", request_id=f"r{i}") for i in range(8)]
    again = client.recommend(USER, k=10, surface="discover", request_id="r0")
    assert item_ids(again) == item_ids(draws[0])
    propensities = [item.propensity for reply in draws for item in reply.items]
    assert all(0 < p <= 1 for p in propensities) and min(propensities) < 0.5
    assert len({tuple(item_ids(reply)) for reply in draws}) > 1
    store.close()


def test_the_customer_value_tier_is_served_and_chooses_a_rule_set(ruled, dataset):
    from cascade.rerank.rules_file import parse_rules

    srv, client, _, _ = ruled
    tiers = {user: client.recommend(user, k=5).tier for user in range(1, 60)}
    assert set(tiers.values()) <= {"A", "B", "C", "D"} and len(set(tiers.values())) >= 3
    assert client.recommend(424242, k=5).tier == ""  # a user the feature load did not know
    ours = tiers[USER]
    other = next(user for user, tier in tiers.items() if tier != ours)
    rules = f"""
[[segments]]
name = "tier-{ours}"
tiers = ["{ours}"]

[[rules]]
kind = "genre_filter"
name = "tier-rule-set"
include = ["Comedy"]
segments = ["tier-{ours}"]
"""
    srv.service.require_pipeline().use_rules(parse_rules(rules))
    assert all("Comedy" in g.split("|") for g in genres_of(dataset, item_ids(client.recommend(USER, k=10))))
    others = genres_of(dataset, item_ids(client.recommend(other, k=10)))
    assert not all("Comedy" in g.split("|") for g in others)  # another tier's users keep every genre
