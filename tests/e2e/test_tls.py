"""TLS and mutual TLS over the real service: only clients with a certificate from the configured CA reach
the methods; plaintext, no certificate and another CA's fail at the handshake; the server takes new
certificates without a restart."""

from __future__ import annotations

import grpc
import pytest

from cascade.config import TLSConfig
from cascade.serving.client import CascadeClient
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from cascade.serving.server import CascadeServer
from tests.helpers import PSEUDONYMS, USER
from tests.tls_certificates import Authority


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ours, theirs = Authority(folder, "ours"), Authority(folder, "theirs")
    return {
        "ca": ours,
        "server": ours.issue("server", server=True),
        "client": ours.issue("client", server=False),
        "rogue": theirs.issue("rogue", server=False),
        "other-ca": theirs,
    }


@pytest.fixture(scope="module")
def mutual(config, built, server, redis_server, pki):
    """A second server on the same models and Redis, serving mutual TLS only."""
    tls = TLSConfig(cert_file=pki["server"].cert, key_file=pki["server"].key, client_ca_file=pki["ca"].path)
    serving = config.serving.model_copy(update={"metrics_port": None, "tls": tls})
    srv = CascadeServer(
        config.model_copy(update={"serving": serving}),
        RedisFeatureStore.from_url(redis_server.url, pseudonyms=PSEUDONYMS),
    )
    port = srv.start()
    srv.load_models()
    try:
        yield srv, port
    finally:
        srv.stop(drain_s=0)


def _code(client: CascadeClient) -> grpc.StatusCode:
    try:
        client.recommend(USER, k=3)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_only_a_certificate_from_the_configured_ca_gets_through(mutual, pki):
    _, port = mutual
    target = f"127.0.0.1:{port}"
    ca = pki["ca"].path
    cases = {
        "plaintext": None,
        "TLS without a client certificate": TLSConfig(ca_file=ca),
        "another CA's client certificate": TLSConfig(
            ca_file=ca, client_cert_file=pki["rogue"].cert, client_key_file=pki["rogue"].key
        ),
        "a server certificate not trusted": TLSConfig(
            ca_file=pki["other-ca"].path,
            client_cert_file=pki["client"].cert,
            client_key_file=pki["client"].key,
        ),
    }
    for case, tls in cases.items():
        with CascadeClient(target, timeout_s=3.0, tls=tls) as client:
            assert _code(client) == grpc.StatusCode.UNAVAILABLE, case
    good = TLSConfig(ca_file=ca, client_cert_file=pki["client"].cert, client_key_file=pki["client"].key)
    with CascadeClient(target, timeout_s=5.0, tls=good) as client:
        assert _code(client) == grpc.StatusCode.OK
        assert client.health() == "SERVING"


def test_new_certificates_are_taken_without_a_restart(mutual, pki, tmp_path):
    srv, port = mutual
    renewed = pki["ca"].issue("server", server=True)  # the same paths, a new key and certificate
    assert renewed.cert == pki["server"].cert
    good = TLSConfig(
        ca_file=pki["ca"].path, client_cert_file=pki["client"].cert, client_key_file=pki["client"].key
    )
    with CascadeClient(f"127.0.0.1:{port}", timeout_s=5.0, tls=good) as client:  # a new connection
        assert _code(client) == grpc.StatusCode.OK
    assert srv._certificates.fetch() is None  # read at that handshake already: nothing new since


def test_tls_settings_come_in_pairs(pki):
    with pytest.raises(ValueError, match="cert_file and key_file"):
        TLSConfig(cert_file=pki["server"].cert)
    with pytest.raises(ValueError, match="client_ca_file"):
        TLSConfig(client_ca_file=pki["ca"].path)
