"""The guard over the real service: a fake profile recorded live is flagged by the published detector and
its later events quarantined; an operator lists, clears and blocks; rate limits refuse a flood; the audit
log names users by pseudonym only."""

from __future__ import annotations

import logging
import time

import grpc
import numpy as np
import pytest

from cascade.core.privacy import Pseudonym
from cascade.guard.attacks import AttackSpec, RatingTable, fake_profiles, pick_targets
from cascade.serving.feature_store import keys
from cascade.training.guard import train_guard
from tests.helpers import PSEUDONYMS

FAKE = 990001  # users no other test touches
FLOOD = 990002
BLOCKED_USER = 990003


@pytest.fixture(scope="module")
def detector(config, built, server):
    ref = train_guard(config)
    srv, _ = server
    deadline = time.monotonic() + 10
    while srv.service.guard.detector() is None and time.monotonic() < deadline:
        time.sleep(0.5)  # the server looks for a newer detector every few seconds
    assert srv.service.guard.detector() is not None
    return ref


def _code(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_a_live_fake_profile_is_quarantined_until_cleared(detector, dataset, client, server, caplog):
    table = RatingTable.of(dataset.interactions)
    targets = pick_targets(dataset.interactions, 1, seed=11)
    spec = AttackSpec("average", 0.01, 0.05, targets, 3)
    rows, _ = fake_profiles(table, dataset.users, dataset.items, spec, (1.0, 5.0), max_profiles=1)
    caplog.set_level(logging.INFO, logger="cascade.guard.audit")
    replies = [
        client.record_event(FAKE, int(item), "rate", rating=float(rating))
        for item, rating in zip(rows["item_id"], rows["rating"])
    ]
    quarantined = [reply.quarantined for reply in replies]
    assert any(quarantined), "the detector never flagged the fake profile"
    first = quarantined.index(True)
    assert all(quarantined[first:]) and first >= 20  # scored from guard.live_min_ratings on
    flags = {flag.pseudonym: flag for flag in client.guard_flags().flags}
    flag = flags[PSEUDONYMS.of(FAKE)]  # the service lists users by pseudonym only
    assert flag.state == "flagged" and flag.by == "detector" and flag.score >= 0.9
    assert flag.quarantined_events == len(replies) - first
    held_items = {int(item) for item in rows["item_id"].iloc[first:]}
    srv, _ = server
    profile = client.customer_profile(FAKE)
    assert profile.history_length == first and not held_items & {int(h.item_id) for h in profile.recent_items}
    # the audit log says who by pseudonym, never by id
    audit = [r for r in caplog.records if r.name == "cascade.guard.audit"]
    assert audit and all(str(FAKE) not in r.getMessage() and r.user != str(FAKE) for r in audit)
    assert audit[0].user == flag.pseudonym and audit[0].action == "flagged"

    cleared = client.clear_user(Pseudonym(flag.pseudonym))  # as an operator copies it from the list
    assert cleared.previous_state == "flagged" and cleared.events == len(replies) - first
    assert client.customer_profile(FAKE).history_length == min(
        len(replies), srv.config.features.history_length
    )
    assert flag.pseudonym not in {listed.pseudonym for listed in client.guard_flags().flags}
    metrics = srv.metrics.guard_events
    assert metrics.labels("quarantined")._value.get() >= len(replies) - first


def test_an_operator_blocks_and_unblocks_a_user(detector, client):
    assert _code(lambda: client.block_user(BLOCKED_USER, reason="")) == grpc.StatusCode.INVALID_ARGUMENT
    assert client.block_user(BLOCKED_USER, reason="chargeback fraud").previous_state == ""
    assert _code(lambda: client.record_event(BLOCKED_USER, 50, "view")) == grpc.StatusCode.PERMISSION_DENIED
    (flag,) = [f for f in client.guard_flags().flags if f.pseudonym == PSEUDONYMS.of(BLOCKED_USER)]
    assert flag.state == "blocked" and flag.reason == "chargeback fraud"
    assert client.clear_user(BLOCKED_USER).previous_state == "blocked"
    assert client.record_event(BLOCKED_USER, 50, "view").history_length == 1


def test_a_flood_from_one_user_is_refused_with_a_retry_delay(client, server):
    srv, _ = server
    limit = srv.config.guard.user_events_per_window
    for n in range(limit):
        client.record_event(FLOOD, 50 + n % 100, "click")
    with pytest.raises(grpc.RpcError) as refused:
        client.record_event(FLOOD, 50, "click")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "user recorded more than" in refused.value.details()
    pushback = dict(refused.value.trailing_metadata()).get("grpc-retry-pushback-ms")
    assert pushback is not None and int(pushback) > 0
    assert srv.metrics.guard_events.labels("limited_user")._value.get() >= 1
    # what the user recorded before the limit is there; the refused event is not
    kept = min(limit, srv.config.features.history_length)
    assert client.customer_profile(FLOOD).events_by_type["click"] == kept


def test_guard_keys_are_per_user_and_outside_the_keyspaces():
    tag = PSEUDONYMS.of(7)
    assert keys.guard_state_key(tag) == f"cascade:guard:{{u:{tag}}}:state".encode()
    assert np.all([keys.tag_of_key(key) == tag for key in keys.guard_keys(tag)])
