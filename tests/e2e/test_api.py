"""The gRPC API of the real service: recommendations, events, similar items, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from cascade.core.artifacts import ArtifactStore
from cascade.serving.client import CascadeClient
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from cascade.serving.server import CascadeServer
from tests.helpers import PSEUDONYMS, USER, free_port, item_ids

pytestmark = pytest.mark.e2e


def test_recommendations_exclude_seen_items_and_are_sorted(client, dataset, built):
    assert client.health() == "SERVING"
    reply = client.recommend(USER, k=20, request_id="req-1")
    assert reply.request_id == "req-1"
    assert not reply.new_user
    ids = item_ids(reply)
    assert len(ids) == 20 and len(set(ids)) == 20
    seen = set(dataset.interactions.loc[dataset.interactions["user_id"] == USER, "item_id"])
    assert not set(ids) & seen
    scores = [i.score for i in reply.items]
    assert scores == sorted(scores, reverse=True)
    titles = dataset.items.set_index("item_id")["title"]
    assert all(item.title == titles[int(item.item_id)] for item in reply.items)
    assert reply.model_versions.recall == built["recall"].version
    assert reply.model_versions.index == built["index"].version
    assert reply.model_versions.ranking == built["ranking"].version
    assert set(reply.stage_ms) >= {"features", "recall", "ranking", "rerank", "serialise"}
    # a user with history gets two-tower, item-item (EASE) and co-occurrence candidates, each tagged with
    # its channel score
    wide = client.recommend(USER, k=50)
    sources = {i.source for i in wide.items}
    assert "two_tower" in sources and sources - {"two_tower"}
    assert sources <= {"two_tower", "item_item", "cooccurrence"}
    assert all(i.channel_score > 0 for i in wide.items if i.source == "cooccurrence")
    assert all(-1.0 <= i.channel_score <= 1.0 for i in wide.items if i.source == "two_tower")
    assert reply.request_id and client.recommend(USER, k=1).request_id  # generated when empty


def test_exclude_ids_are_respected(client):
    first = item_ids(client.recommend(2, k=10))
    again = item_ids(client.recommend(2, k=10, exclude_item_ids=first[:3]))
    assert not set(first[:3]) & set(again)
    # the other items keep their scores, so their order; at most the 3 freed slots go to new items
    kept = [i for i in again if i in first]
    assert kept == [i for i in first[3:] if i in again]
    assert len(kept) >= len(first) - 3 - 3 and len(again) == 10


def test_record_event_changes_the_next_response_at_once(client):
    user = 5
    before = item_ids(client.recommend(user, k=10))
    reply = client.record_event(user, before[0], "click")
    assert reply.history_length >= 1
    after = item_ids(client.recommend(user, k=10))
    assert before[0] not in after
    assert after != before


def test_unknown_users_get_new_user_recommendations(config, client):
    import pandas as pd

    from cascade.ranking.features import UserRow
    from cascade.serving.models import ServingModels
    from cascade.serving.pipeline import RecommendationPipeline, UserContext

    popular = client.recommend(999_999, k=10)
    assert popular.new_user and len(popular.items) == 10
    assert {i.source for i in popular.items} == {"popular"}
    by_profile = client.recommend(999_998, k=10, gender="F", age=25, occupation="writer")
    assert by_profile.new_user and len(by_profile.items) == 10
    # demographics only: the two-tower channel embeds them, and their segment's popular items join in
    assert {i.source for i in by_profile.items} <= {"two_tower", "segment_popular"}
    wide = client.recommend(999_998, k=50, gender="F", age=25, occupation="writer", zip_code="94110")
    assert len(wide.items) == 50 and {i.source for i in wide.items} <= {"two_tower", "segment_popular"}
    # the segment's items are among the candidates; how many reach the top 50 is the ranker's call
    models = ServingModels.load(ArtifactStore(config.artifacts_dir), config)
    profile = pd.DataFrame(
        {"user_id": [999_998], "gender": ["F"], "age": [25], "occupation": ["writer"], "zip_code": ["94110"]}
    )
    encoded = models.schema.encode_users(profile)
    row = UserRow(0, *(int(getattr(encoded, name)[0]) for name in ("gender", "age", "occupation", "zip")))
    empty = np.zeros(0, dtype=np.int64)
    merged, _ = RecommendationPipeline(models, config).recall(UserContext(row, empty, empty, True))
    assert "segment_popular" in set(merged.names().tolist())
    # an unknown user's events are recorded and filtered like anyone's
    client.record_event(999_997, item_ids(popular)[0], "view")
    assert item_ids(popular)[0] not in item_ids(client.recommend(999_997, k=10))
    # ids are text: "0999997" is the same user of this integer catalogue, "alice" is a new one, and an
    # item id with leading zeros is the catalogue's item
    assert item_ids(popular)[0] not in item_ids(client.recommend("0999997", k=10))
    alice = client.recommend("alice", k=10)
    assert alice.new_user and len(alice.items) == 10
    client.record_event("alice", "0" + str(item_ids(alice)[0]), "view")
    assert item_ids(alice)[0] not in item_ids(client.recommend("alice", k=10))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"user_id": "", "k": 5}, "user_id"),
        ({"user_id": "u" * 257, "k": 5}, "user_id"),
        ({"user_id": "ü" * 129, "k": 5}, "user_id"),  # 258 bytes of UTF-8
        ({"user_id": "1", "k": 0}, "k"),
        ({"user_id": "1", "k": -2}, "k"),
        ({"user_id": "1", "k": 51}, "k"),
        ({"user_id": "1", "k": 5, "exclude_item_ids": ["1"] * 6}, "exclude_item_ids"),
        ({"user_id": "1", "k": 5, "exclude_item_ids": ["1", "x" * 257]}, "exclude_item_ids[1]"),
        ({"user_id": "1", "k": 5, "request_id": "has space"}, "request_id"),
        ({"user_id": "424242", "k": 5, "gender": "Q"}, "demographics.gender"),
        ({"user_id": "424242", "k": 5, "age": 500}, "demographics.age"),
        ({"user_id": "1", "k": 5, "age": -1}, "demographics.age"),
        ({"user_id": "424242", "k": 5, "zip_code": "9" * 20}, "demographics.zip_code"),
        ({"user_id": "424242", "k": 5, "zip_code": "12;34"}, "demographics.zip_code"),
        ({"user_id": "1", "k": 5, "surface": "home page"}, "surface"),
        ({"user_id": "1", "k": 5, "timestamp": 1}, "timestamp"),
        ({"user_id": "1", "k": 5, "include_genres": ["Comedy", "Comedie"]}, "include_genres[1]"),
        ({"user_id": "1", "k": 5, "exclude_genres": ["drama"]}, "exclude_genres[0]"),
        ({"user_id": "1", "k": 5, "page_size": 51}, "page_size"),
        ({"user_id": "1", "k": 5, "page_token": "abc"}, "page_token"),
        ({"user_id": "1", "k": 5, "page_size": 5, "page_token": "abc"}, "page_token"),
    ],
)
def test_bad_recommend_requests_are_invalid_argument_naming_the_field(client, kwargs, field):
    kwargs = dict(kwargs)
    user_id = kwargs.pop("user_id")
    with pytest.raises(grpc.RpcError) as err:
        client.recommend(user_id, **kwargs)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:")


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("", "1", "view"), "user_id"),
        (("1", "", "view"), "item_id"),
        (("1", "99999999", "view"), "item_id"),
        (("1", "1", 0), "event_type"),
        (("1", "1", 42), "event_type"),
    ],
)
def test_bad_events_are_rejected_without_touching_redis(client, redis_server, args, field):
    import redis

    raw = redis.Redis.from_url(redis_server.url)
    before = raw.dbsize()
    with pytest.raises(grpc.RpcError) as err:
        client.record_event(*args)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:")
    assert raw.dbsize() == before
    with pytest.raises(grpc.RpcError) as err:
        client.record_event("1", "1", "view", timestamp=-5)
    assert err.value.details().startswith("timestamp:")


def test_concurrent_requests_all_succeed(client):
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda u: client.recommend(u, k=10), range(1, 65)))
    assert all(len(r.items) == 10 for r in replies)


def test_cli_recommend_queries_the_running_server(server):
    _, port = server
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cascade.cli",
            "recommend",
            "--user-id",
            str(USER),
            "--k",
            "3",
            "--target",
            f"127.0.0.1:{port}",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert '"items"' in out and '"modelVersions"' in out
    json.loads(out)  # --json: JSON only on stdout
    stranger = [sys.executable, "-m", "cascade.cli", "recommend", "--user-id", "987654", "--k", "3"]
    stranger += ["--target", f"127.0.0.1:{port}", "--gender", "F", "--age", "25", "--occupation", "writer"]
    reply = json.loads(
        subprocess.run([*stranger, "--json"], capture_output=True, text=True, timeout=60, check=True).stdout
    )
    assert reply["newUser"] and len(reply["items"]) == 3
    bad_age = subprocess.run([*stranger, "--age", "400"], capture_output=True, text=True, timeout=60)
    assert bad_age.returncode == 1 and "demographics.age" in bad_age.stderr  # sent, and checked by the server
    for service in ("", "cascade.feature_store"):
        health = subprocess.run(
            [
                sys.executable,
                "-m",
                "cascade.cli",
                "health",
                "--target",
                f"127.0.0.1:{port}",
                "--service",
                service,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert health.returncode == 0 and health.stdout.strip() == "SERVING"
    nobody = subprocess.run(
        [sys.executable, "-m", "cascade.cli", "health", "--target", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert nobody.returncode == 1 and "UNAVAILABLE" in nobody.stderr
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "cascade.cli",
            "recommend",
            "--user-id",
            "x" * 257,
            "--target",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and bad.stdout == "" and "INVALID_ARGUMENT: user_id" in bad.stderr


def test_an_unreachable_store_degrades_answers_and_never_fails_them(config, built, tmp_path):
    """Redis unreachable from the start: Recommend answers from the request's demographics (or popular
    items), flagged; RecordEvent is UNAVAILABLE, retryable; health stays SERVING; validation answers first."""
    dead = RedisFeatureStore.from_url(
        f"unix://{tmp_path}/nothing-listens.sock", cache_size=0, pseudonyms=PSEUDONYMS
    )
    srv = CascadeServer(config, dead)
    port = srv.start()
    try:
        srv.load_models()
        with CascadeClient(f"127.0.0.1:{port}") as c:
            for _ in range(3):
                reply = c.recommend(USER, k=5, gender="M", age=30)
                assert reply.degraded and list(reply.degraded_reasons) == ["feature_store_unavailable"]
                assert len(reply.items) == 5
            anonymous = c.recommend(10**12, k=5)  # nothing known, nothing given: popular items
            assert anonymous.degraded and {item.source for item in anonymous.items} == {"popular"}
            with pytest.raises(grpc.RpcError) as refused:
                c.record_event(USER, 50)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert c.health() == "SERVING"
            with pytest.raises(grpc.RpcError) as bad:
                c.recommend("", k=5)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        srv.stop(drain_s=0)


def test_similar_items_come_from_the_index_and_exclude_the_item(client, server):
    srv, _ = server
    reply = client.similar_items(50, k=10, request_id="sim-1")
    assert reply.request_id == "sim-1" and len(reply.items) == 10
    ids = [int(i.item_id) for i in reply.items]
    assert 50 not in ids and len(set(ids)) == 10
    scores = [i.score for i in reply.items]
    assert scores == sorted(scores, reverse=True)
    # the same answer as exact search over the item embeddings (the test index is Flat)
    models = srv.service.require_pipeline().models
    item = int(models.schema.item_index([50])[0])
    emb = models.index.embeddings
    exact = np.argsort(-(emb @ emb[item - 1]))[:11] + 1
    assert ids == [int(i) for i in models.schema.item_id_of(exact[exact != item][:10])]
    assert reply.model_versions.index == models.versions["index"]


@pytest.mark.parametrize(
    ("item_id", "k", "code", "field"),
    [
        ("", 5, grpc.StatusCode.INVALID_ARGUMENT, "item_id"),
        ("x" * 257, 5, grpc.StatusCode.INVALID_ARGUMENT, "item_id"),
        ("abc", 5, grpc.StatusCode.NOT_FOUND, "item_id"),
        ("50", 0, grpc.StatusCode.INVALID_ARGUMENT, "k"),
        ("50", 100_000, grpc.StatusCode.INVALID_ARGUMENT, "k"),
        ("99999999", 5, grpc.StatusCode.NOT_FOUND, "item_id"),
    ],
)
def test_bad_similar_items_requests_name_the_field(client, item_id, k, code, field):
    with pytest.raises(grpc.RpcError) as err:
        client.similar_items(item_id, k=k)
    assert err.value.code() == code
    assert err.value.details().startswith(f"{field}:")
