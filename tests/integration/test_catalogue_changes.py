"""The catalogue's changes in Redis: one hash tag, so they change together on a cluster too; version 1's
untagged keys are taken over."""

from __future__ import annotations

import json

from cascade.serving.catalogue_changes import ITEMS_KEY, VERSION_KEY, CatalogueChanges, ItemRecord


def test_upserts_and_deletes_change_together_on_one_server_and_on_a_cluster(store_redis):
    changes = CatalogueChanges(store_redis)
    assert changes.upsert(ItemRecord("sku-1", "Lamp", ("home",), 2024, {"colour": "red"})) == (True, 1)
    assert changes.upsert(ItemRecord("sku-1", "Lamp II", ("home",), 2025)) == (False, 2)
    assert changes.delete(50) == (True, 3) and changes.delete(50) == (False, 3)
    state = changes.state()
    assert state.version == 3 and state.deleted == ("50",)
    assert [(item.item_id, item.title, item.seq) for item in state.items] == [("sku-1", "Lamp II", 1)]


def test_version_1_keys_of_one_server_are_renamed_at_first_use(redis_client):
    record = {"item_id": "9", "title": "Old", "genres": [], "year": 1999, "attributes": [], "seq": 1}
    redis_client.hset(b"cascade:catalogue:v1:items", "9", json.dumps(record))
    redis_client.sadd(b"cascade:catalogue:v1:deleted", "12")
    redis_client.set(b"cascade:catalogue:v1:seq", 1)
    redis_client.set(b"cascade:catalogue:v1:version", 2)
    state = CatalogueChanges(redis_client).state()
    assert state.version == 2 and state.deleted == ("12",) and [item.title for item in state.items] == ["Old"]
    assert not redis_client.keys(b"cascade:catalogue:v1:*")
    assert redis_client.get(VERSION_KEY) == b"2" and redis_client.hlen(ITEMS_KEY) == 1
    # a second server finds nothing to rename, and a v1 key written late by an old server is left alone
    redis_client.set(b"cascade:catalogue:v1:version", 5)
    assert CatalogueChanges(redis_client).version() == 2
