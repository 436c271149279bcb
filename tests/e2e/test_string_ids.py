"""A catalogue that is not MovieLens: users with UUIDs and items with SKU-like ids holding a colon, a slash,
braces, a space and non-ASCII letters, trained and served end to end over gRPC with its own Redis."""

from __future__ import annotations

import grpc
import pytest

from cascade.config import AppConfig
from cascade.data.synthetic import generate
from cascade.serving.app import load_features
from cascade.serving.client import CascadeClient
from cascade.serving.feature_store.embedded import EmbeddedRedis
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from cascade.serving.server import CascadeServer
from cascade.training.index import rebuild_index
from cascade.training.ranking import train_ranking
from cascade.training.recall import train_recall
from tests.helpers import PSEUDONYMS


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("shop")
    dataset = generate(300, 400, 9000, seed=3, name="shop", string_ids=True)
    dataset.save(root / "data" / "shop")
    redis_server = EmbeddedRedis(root / "redis.db")
    config = AppConfig.model_validate(
        {
            "artifacts_dir": str(root / "artifacts"),
            "data": {"data_dir": str(root / "data"), "dataset": "shop"},
            "recall": {"epochs": 2, "num_candidates": 100, "early_stopping_patience": 1},
            "ranking": {
                "training_candidates": 50,
                "model": {"type": "lightgbm", "rounds": 30, "cv_folds": 2},
            },
            "serving": {"port": 0, "redis_url": redis_server.url, "reload_interval_s": 0, "drain_s": 0.0},
        }
    )
    train_recall(config, progress=False)
    rebuild_index(config)
    train_ranking(config, progress=False)
    store = RedisFeatureStore.from_url(redis_server.url, pseudonyms=PSEUDONYMS)
    load_features(config, store)
    server = CascadeServer(config, store)
    port = server.start()
    server.load_models()
    try:
        with CascadeClient(f"127.0.0.1:{port}") as client:
            yield dataset, client
    finally:
        server.stop(drain_s=0)
        redis_server.stop()


def test_a_catalogue_of_string_ids_is_served_end_to_end(shop):
    dataset, client = shop
    catalogue = set(dataset.items["item_id"])
    user = str(dataset.interactions["user_id"].iloc[0])
    seen = set(dataset.interactions.loc[dataset.interactions["user_id"] == user, "item_id"])
    reply = client.recommend(user, k=10)
    ids = [item.item_id for item in reply.items]
    assert len(ids) == 10 and set(ids) <= catalogue and not set(ids) & seen and not reply.new_user
    # excluding by string id, and an event on a string item, reflected at once
    excluded = client.recommend(user, k=10, exclude_item_ids=ids[:2])
    assert not set(ids[:2]) & {item.item_id for item in excluded.items}
    assert client.record_event(user, ids[0], "purchase").history_length > 0
    after = client.recommend(user, k=10)
    assert ids[0] not in {item.item_id for item in after.items}  # now seen
    # pages of string ids never repeat
    first = client.recommend(user, page_size=5)
    second = client.recommend(user, page_size=5, page_token=first.next_page_token)
    paged = [item.item_id for item in (*first.items, *second.items)]
    assert len(set(paged)) == 10 and set(paged) <= catalogue
    # SimilarItems by a string id; an unknown one is NOT_FOUND
    similar = client.similar_items(ids[1], k=5, exclude_item_ids=[ids[2]])
    assert len(similar.items) == 5 and ids[1] not in {i.item_id for i in similar.items}
    assert ids[2] not in {i.item_id for i in similar.items}
    with pytest.raises(grpc.RpcError) as err:
        client.similar_items("sku:nope/{ü}", k=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_unknown_string_users_are_new_users_and_ids_are_bounded(shop):
    _, client = shop
    stranger = "a-new-shopper/ø 1"
    reply = client.recommend(stranger, k=5)
    assert len(reply.items) == 5 and reply.new_user
    client.record_event(stranger, reply.items[0].item_id, "click")
    assert reply.items[0].item_id not in {i.item_id for i in client.recommend(stranger, k=5).items}
    with pytest.raises(grpc.RpcError) as err:
        client.recommend("u" * 257, k=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("user_id:")
    with pytest.raises(grpc.RpcError) as err:
        client.record_event(stranger, "sku:not-in-catalogue", "view")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
