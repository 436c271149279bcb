"""Privacy by design over the real service, on a shop whose users have UUIDs (so that a raw id found anywhere
is a real leak, not a coincidence of small integers): no raw user id in Redis (keys or values), the logs,
the metrics, the traces or the artifacts, and no demographics in the logs; ForgetUser removes a user from
the store, and the next training run provably does not see them."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time

import grpc
import numpy as np
import pandas as pd
import pytest

from cascade.config import AppConfig, TracingConfig
from cascade.core.artifacts import ArtifactStore
from cascade.core.privacy import PSEUDONYM
from cascade.data.dataset import Dataset
from cascade.data.forgotten import DenyList
from cascade.data.synthetic import generate
from cascade.recall.bundle import RECALL, RecallBundle
from cascade.serving.app import load_features
from cascade.serving.client import CascadeClient
from cascade.serving.feature_store import keys
from cascade.serving.feature_store.embedded import EmbeddedRedis
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from cascade.serving.server import CascadeServer
from cascade.serving.tracing import Tracing
from cascade.training.guard import train_guard
from cascade.training.index import rebuild_index
from cascade.training.prepare import prepare
from cascade.training.ranking import train_ranking
from cascade.training.recall import train_recall
from tests.helpers import PSEUDONYM_KEY, PSEUDONYMS

pytestmark = pytest.mark.e2e

NEW_USER = "0f7c2a94-new-user-of-the-privacy-test"  # not in the data set: known from its events only
NEWCOMER = "5be1d7c0-newcomer-of-the-privacy-test"


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        """Every record's message and the fields its caller added (what the JSON formatter writes beside
        the message), not the record's own bookkeeping (times, pids, paths)."""
        return "\n".join(
            f"{record.getMessage()} {record.exc_text or ''} "
            + " ".join(f"{k}={v!r}" for k, v in vars(record).items() if k not in _RECORD_FIELDS)
            for record in self.records
        )


_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    logs = _Records()
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(logs)
    root_logger.setLevel(logging.DEBUG)
    root = tmp_path_factory.mktemp("privacy")
    dataset = generate(200, 300, 6000, seed=5, name="shop", string_ids=True)
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
            "privacy": {"pseudonym_key": PSEUDONYM_KEY},
            # the scan flags a changing few of the generated users: the forget test counts users exactly
            "guard": {"scan_before_training": False},
            "serving": {
                "port": 0, "redis_url": redis_server.url, "reload_interval_s": 0, "drain_s": 0.0,
                "metrics_port": None,
            },
        }
    )  # fmt: skip
    train_recall(config, progress=False)
    rebuild_index(config)
    train_ranking(config, progress=False)
    train_guard(config)
    store = RedisFeatureStore.from_url(redis_server.url, pseudonyms=PSEUDONYMS)
    load_features(config, store, settle_s=0.0)
    exporter = InMemorySpanExporter()
    tracing = Tracing.configure(TracingConfig(service_name="privacy-test"), SimpleSpanProcessor(exporter))
    server = CascadeServer(config, store, tracing=tracing)
    port = server.start()
    server.load_models()
    try:
        with CascadeClient(f"127.0.0.1:{port}") as client:
            yield {
                "config": config, "dataset": dataset, "client": client, "server": server, "port": port,
                "store": store, "logs": logs, "spans": exporter, "redis": store.client,
            }  # fmt: skip
    finally:
        server.stop(drain_s=0)
        redis_server.stop()
        root_logger.removeHandler(logs)
        root_logger.setLevel(level)


def _redis_text(client) -> bytes:
    """Every key and every value the store holds, as bytes."""
    parts: list[bytes] = []
    for key in client.scan_iter():
        parts.append(key)
        kind = client.type(key)
        if kind == b"string":
            parts.append(client.get(key) or b"")
        elif kind == b"hash":
            parts.extend(b"%s=%s" % pair for pair in client.hgetall(key).items())
        elif kind == b"list":
            parts.extend(client.lrange(key, 0, -1))
        elif kind == b"set":
            parts.extend(client.smembers(key))
        elif kind == b"zset":
            parts.extend(client.zrange(key, 0, -1))
        elif kind == b"stream":
            parts.extend(b"%s=%s" % pair for _, fields in client.xrange(key) for pair in fields.items())
    return b"\n".join(parts)


def _artifact_texts(folder) -> dict[str, bytes]:
    """Each artifact file's bytes, with the text inside its arrays and tables spelled out (compressed or
    binary containers would hide a string from a plain byte search)."""
    texts = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        body = path.read_bytes()
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                body += b"".join(
                    " ".join(map(str, arrays[name].ravel().tolist())).encode() for name in arrays
                )
        elif path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if array.dtype.kind in "US":
                body += " ".join(map(str, array.ravel().tolist())).encode()
        elif path.suffix == ".parquet":
            body += pd.read_parquet(path).to_csv().encode()
        texts[str(path.relative_to(folder))] = body
    return texts


def test_no_raw_user_id_or_demographics_anywhere_the_service_or_training_writes(shop):
    client, dataset, server = shop["client"], shop["dataset"], shop["server"]
    users = dataset.users.set_index("user_id")
    touched = [str(u) for u in dataset.users["user_id"].iloc[:4]]
    item = str(dataset.items["item_id"].iloc[0])
    for user in touched[:3]:
        assert client.recommend(user, k=5).items
        client.record_event(user, item, "rate", rating=4.0)
        assert client.customer_profile(user).demographics.occupation == users.loc[user, "occupation"]
    client.record_event(NEW_USER, item, "click")
    client.recommend(NEW_USER, k=5)
    with pytest.raises(grpc.RpcError) as missing:
        client.customer_profile("9d1e-nobody")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    client.block_user(touched[3], reason="chargeback fraud")
    (flag,) = client.guard_flags().flags
    assert flag.pseudonym == PSEUDONYMS.of(touched[3]) and PSEUDONYM.fullmatch(flag.pseudonym)
    with pytest.raises(grpc.RpcError):
        client.record_event(touched[3], item, "view")  # refused: logged and audited

    everyone = [str(u) for u in dataset.users["user_id"]] + [NEW_USER, "9d1e-nobody"]
    redis_text = _redis_text(shop["redis"])
    assert PSEUDONYMS.of(touched[0]).encode() in redis_text  # the scan reads what the store holds
    in_redis = [u for u in everyone if u.encode() in redis_text]
    tags = {keys.tag_of_key(key) for key in shop["redis"].scan_iter(match=b"*{u:*")} - {None}
    assert not in_redis and tags and all(PSEUDONYM.fullmatch(tag) for tag in tags)

    log_text = shop["logs"].text()
    assert len(shop["logs"].records) > 20  # training's and serving's records
    leaked = [u for u in everyone if u in log_text]
    zip_codes = [users.loc[user, "zip_code"] for user in touched]
    demographics = [z for z in zip_codes if re.search(rf"(?<![\d.]){z}(?![\d.])", log_text)]
    assert not leaked and not demographics
    assert PSEUDONYMS.of(touched[3]) in log_text  # the audit names the blocked user by pseudonym

    from prometheus_client import generate_latest

    metrics = generate_latest(server.metrics.registry).decode()
    spans = shop["spans"].get_finished_spans()
    span_text = json.dumps([[s.name, dict(s.attributes or {}), [e.name for e in s.events]] for s in spans])
    assert spans and "cascade" in metrics
    assert not [u for u in everyone if u in metrics or u in span_text]

    texts = _artifact_texts(shop["config"].artifacts_dir)
    assert len(texts) > 20
    in_artifacts = {name for name, body in texts.items() for u in everyone if u.encode() in body}
    assert not in_artifacts
    assert not [name for name, body in texts.items() if PSEUDONYM_KEY.encode() in body]  # nor the key
    schema = RecallBundle(ArtifactStore(shop["config"].artifacts_dir).require(RECALL), PSEUDONYMS).schema
    assert schema.user_index([touched[0]])[0] > 0  # the pseudonymised schema still finds the user by id


def test_a_forgotten_user_is_gone_from_the_store_and_from_every_later_training_run(shop):
    config, client, redis = shop["config"], shop["client"], shop["redis"]
    dataset = Dataset.load(
        config.data.path, pseudonyms=PSEUDONYMS
    )  # as loaded: the guard's scan left some out
    user = str(dataset.interactions["user_id"].value_counts().index[0])  # the most active: plenty to lose
    pseudonym = PSEUDONYMS.of(user)
    client.record_event(user, str(dataset.items["item_id"].iloc[1]), "rate", rating=5.0, event_id="e-9")
    client.block_user(user, reason="to be forgotten while blocked")
    assert any(pseudonym.encode() in key for key in redis.scan_iter())
    old_recall = ArtifactStore(config.artifacts_dir).require(RECALL)
    old_fingerprint = Dataset.fingerprint_of(config.data.path)

    reply = client.forget_user(user)
    assert reply.pseudonym == pseudonym and reply.deny_listed and not reply.already_deny_listed
    removed = dict(reply.removed)
    assert all(removed[kind] == 1 for kind in ("profile", "history", "seen", "ratings", "activity")), removed
    assert removed["guard_state"] == 1 and removed["flag"] == 1 and removed["expiring"] >= 1  # the event id
    assert not any(pseudonym.encode() in key for key in redis.scan_iter())
    assert redis.zscore(keys.FORGOTTEN_KEY, pseudonym) is not None
    with pytest.raises(grpc.RpcError) as gone:
        client.customer_profile(user)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND  # no profile, no history left
    # back as a new user: their events are kept, but the models' row learnt from their old ones is not used
    now = int(time.time())
    item = str(dataset.items["item_id"].iloc[2])
    for someone in (user, NEWCOMER):
        client.record_event(someone, item, "click", timestamp=now)
    as_forgotten, as_newcomer = (client.recommend(someone, k=10) for someone in (user, NEWCOMER))
    assert [i.item_id for i in as_forgotten.items] == [i.item_id for i in as_newcomer.items]
    assert [round(i.score, 5) for i in as_forgotten.items] == [round(i.score, 5) for i in as_newcomer.items]
    again = client.forget_user(user)
    assert again.already_deny_listed and again.removed["history"] == 1
    assert pseudonym in DenyList.load(config.data.path).pseudonyms
    with pytest.raises(grpc.RpcError) as bad:
        client.forget_user("")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # the next training run does not see the user: not in its input, not in what it publishes
    assert Dataset.fingerprint_of(config.data.path) != old_fingerprint
    assert user not in set(prepare(config).dataset.interactions["user_id"])
    new_recall = train_recall(config, progress=False)
    assert new_recall.version != old_recall.version
    assert new_recall.manifest["dataset"]["fingerprint"] == Dataset.fingerprint_of(config.data.path)
    old_schema, new_schema = (RecallBundle(ref, PSEUDONYMS).schema for ref in (old_recall, new_recall))
    assert pseudonym in old_schema.user_pseudonyms and pseudonym not in new_schema.user_pseudonyms
    assert new_schema.num_users == old_schema.num_users - 1 and new_schema.user_index([user])[0] == 0
    # nor does a feature load bring them back into the store
    load_features(config, shop["store"], if_changed=True, settle_s=0.0)
    assert not any(pseudonym.encode() in key for key in redis.scan_iter())
    # reading the data set without the key that can match the deny-list is refused, not silently wrong
    with pytest.raises(Exception, match="pseudonym key"):
        Dataset.load(config.data.path)


def test_the_cli_forgets_a_user_and_lists_flags_by_pseudonym(shop):
    config, client = shop["config"], shop["client"]
    user = str(shop["dataset"].users["user_id"].iloc[10])
    client.block_user(user, reason="cli test")
    env = os.environ | {
        "CASCADE_DATA__DATA_DIR": str(config.data.data_dir),
        "CASCADE_DATA__DATASET": "shop",
        "CASCADE_PRIVACY__PSEUDONYM_KEY": PSEUDONYM_KEY,
    }
    target = ["--target", f"127.0.0.1:{shop['port']}"]

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "cascade.cli", "--log-format", "text", *args, *target]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)

    listed = run("guard", "list")
    assert listed.returncode == 0 and PSEUDONYMS.of(user) in listed.stdout and user not in listed.stdout
    cleared = run("guard", "clear", PSEUDONYMS.of(user))  # as an operator copies it from the list
    assert cleared.returncode == 0 and "no longer blocked" in cleared.stdout
    forgotten = run("privacy", "forget", user)
    assert forgotten.returncode == 0, forgotten.stderr
    assert "added to the deny-list" in forgotten.stdout and "profile 1" in forgotten.stdout
    assert PSEUDONYMS.of(user) in DenyList.load(config.data.path).pseudonyms
    assert user not in forgotten.stderr  # its log lines too
