"""Authorisation over the real service: the matrix of keys against methods, open health and reflection,
rotation without a restart, and a non-loopback bind refused without keys."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cascade.core.errors import ConfigError
from cascade.serving.auth import KeyEntry, key_digest, new_key, render_keys
from cascade.serving.client import CascadeClient
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from cascade.serving.server import CascadeServer
from tests.helpers import PSEUDONYMS, USER

KEYS = {name: new_key() for name in ("reader", "recorder", "admin", "expired", "revoked")}


@pytest.fixture(scope="module")
def guarded(config, built, server, redis_server, tmp_path_factory):
    """A second server on the same models and Redis, with API keys."""
    path = tmp_path_factory.mktemp("auth") / "keys.toml"
    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    scopes = {"reader": ("recommend",), "recorder": ("record_event",), "admin": ("admin",),
              "expired": ("recommend",), "revoked": ("recommend",)}  # fmt: skip
    path.write_text(
        render_keys(
            [
                KeyEntry(
                    id=name,
                    sha256=key_digest(key),
                    scopes=scopes[name],
                    expires=past if name == "expired" else None,
                )
                for name, key in KEYS.items()
            ]
        )
    )
    serving = config.serving.model_copy(
        update={
            "metrics_port": None,
            "auth": config.serving.auth.model_copy(update={"api_keys_path": path, "reload_interval_s": 0.1}),
        }
    )
    srv = CascadeServer(
        config.model_copy(update={"serving": serving}),
        RedisFeatureStore.from_url(redis_server.url, pseudonyms=PSEUDONYMS),
    )
    port = srv.start()
    srv.load_models()
    try:
        yield srv, port, path
    finally:
        srv.stop(drain_s=0)


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_each_key_calls_what_its_scopes_allow_and_nothing_else(guarded):
    _, port, _ = guarded
    target = f"127.0.0.1:{port}"
    calls = {
        "recommend": lambda c: c.recommend(USER, k=3),
        "similar": lambda c: c.similar_items(50, k=3),
        "record": lambda c: c.record_event(931, 50, "view", event_id="auth-matrix"),  # a user no test reads
        "profile": lambda c: c.customer_profile(USER),
        # an upsert the handler refuses: past authorisation, and no catalogue change for other tests
        "upsert": lambda c: c.upsert_item("", title="Nothing"),
    }
    ok, denied, unauthenticated = (
        grpc.StatusCode.OK,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    )

    def allowed(*names: str) -> dict:
        return {name: ok if name in names else denied for name in calls}

    expected = {
        None: dict.fromkeys(calls, unauthenticated),
        "csk_not-a-key": dict.fromkeys(calls, unauthenticated),
        KEYS["expired"]: dict.fromkeys(calls, unauthenticated),
        KEYS["reader"]: allowed("recommend", "similar"),
        KEYS["recorder"]: allowed("record"),
        KEYS["admin"]: allowed("profile") | {"upsert": grpc.StatusCode.INVALID_ARGUMENT},
    }
    matrix = {}
    for key, wanted in expected.items():
        with CascadeClient(target, api_key=key or "") as client:
            matrix[key] = {name: code_of(lambda call=call: call(client)) for name, call in calls.items()}
        assert matrix[key] == wanted, key
    # health and reflection stay open to callers without a key
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_revoked_key_stops_working_without_a_restart(guarded):
    _, port, path = guarded
    with CascadeClient(f"127.0.0.1:{port}", api_key=KEYS["revoked"]) as client:
        assert len(client.recommend(USER, k=3).items) == 3
        kept = [line for line in path.read_text().split("[[keys]]") if 'id = "revoked"' not in line]
        path.write_text("[[keys]]".join(kept))
        deadline = time.monotonic() + 5
        while (
            code_of(lambda: client.recommend(USER, k=3)) == grpc.StatusCode.OK and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert code_of(lambda: client.recommend(USER, k=3)) == grpc.StatusCode.UNAUTHENTICATED


def test_a_non_loopback_bind_without_keys_refuses_to_start(config, redis_server, monkeypatch):
    monkeypatch.delenv("CASCADE_API_KEYS", raising=False)
    exposed = config.model_copy(update={"serving": config.serving.model_copy(update={"host": "0.0.0.0"})})
    with pytest.raises(ConfigError, match="not a loopback address and no API keys"):
        CascadeServer(exposed, RedisFeatureStore.from_url(redis_server.url, pseudonyms=PSEUDONYMS))
