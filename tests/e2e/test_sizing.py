"""`cascade bench memory`: what a replica of the session's models holds, by what it grows with, and what the
feature store holds per user; the sizing guide multiplies these out."""

from __future__ import annotations

from cascade.bench.replica_memory import account, store_account, summary


def test_a_replica_is_accounted_per_item_per_user_and_per_interaction(config, built, server):
    report = account(config)
    counts, per = report["counts"], report["bytes_per"]
    assert counts["items"] == 1682 and counts["users"] == 943
    dim = config.recall.embedding_dim
    # at the least, every item's vector in the index and again beside it, in float32
    assert per["item"] >= 2 * dim * 4
    item_parts = {row["path"] for row in report["largest"]["item"]}
    assert {"models.index.cpu_index", "models.index.embeddings"} <= item_parts
    assert per["interaction"] == 8  # the item statistics' event keys
    assert per["user"] >= dim * 4  # the user tower's id embedding
    store = store_account(config)
    assert store["users_sampled"] >= 900  # the loaded users, and those other tests recorded events for
    assert 500 < store["bytes_per_user"] < 50_000
    assert store["seen_items_per_user"] > 20
    report["store"] = store
    assert "bytes per user" in summary(report)
