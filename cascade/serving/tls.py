"""TLS and mutual TLS of the gRPC port (``serving.tls``): the server's credentials, read again when the
certificate files change (rotation without a restart: each new connection's handshake asks), and a
client's channel credentials from the same section."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc

from cascade.config import TLSConfig

logger = logging.getLogger(__name__)


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def _stamp(paths: list[Path | None]) -> tuple:
    return tuple(
        (p.stat().st_mtime_ns, p.stat().st_size) if p is not None and p.exists() else None for p in paths
    )


class ServerCertificates:
    """The server's key, certificate chain and (mutual TLS) client CA, read when the files change."""

    def __init__(self, tls: TLSConfig):
        self.tls = tls
        self._paths = [tls.cert_file, tls.key_file, tls.client_ca_file]
        self._lock = threading.Lock()
        self._seen = _stamp(self._paths)
        self.initial = self._configuration()

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(_read(self.tls.key_file), _read(self.tls.cert_file))],
            root_certificates=_read(self.tls.client_ca_file),
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's per-handshake question: a new configuration when the files changed, else None (keep)."""
        with self._lock:
            stamp = _stamp(self._paths)
            if stamp == self._seen:
                return None
            try:
                configuration = self._configuration()
            except (OSError, ValueError) as exc:  # a half-copied file: keep the current certificates
                logger.error("TLS certificates not reloaded: %s", exc)
                return None
            self._seen = stamp
            logger.info("TLS certificates reloaded from %s", self.tls.cert_file)
            return configuration

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.initial, self.fetch, require_client_authentication=self.tls.client_ca_file is not None
        )


def channel_credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    """A client's credentials: trusting ``ca_file`` (or the system's roots), presenting the client
    certificate when one is configured (mutual TLS)."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file),
        private_key=_read(tls.client_key_file),
        certificate_chain=_read(tls.client_cert_file),
    )
