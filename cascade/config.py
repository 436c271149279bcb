"""The app config: each component's config, composed into one model that one TOML file loads.

Each section's fields are described beside the component that reads them: ``[data]`` in
``cascade.data.config``, ``[features]`` in ``cascade.core.config`` (the feature schema's), ``[recall]`` in
``cascade.recall.config``, ``[ranking]`` in ``cascade.ranking.config`` (one sub-config per ranker),
``[rerank]`` in ``cascade.rerank.config``, ``[offline]`` in ``cascade.core.engines.config``. ``[serving]``
is here: it configures the deployment as a whole, which the server, the bench harness and the CLI all read,
and this module sits below the server in the import layers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cascade.core.artifacts import ArtifactStore
from cascade.core.config import ComponentConfig, FeatureConfig, read_config_file
from cascade.core.engines.config import OfflineConfig
from cascade.core.privacy import PrivacyConfig, Pseudonymiser
from cascade.customers.config import CustomersConfig
from cascade.data.config import DataConfig
from cascade.guard.config import GuardConfig
from cascade.ranking.config import RankingConfig
from cascade.recall.config import RecallConfig
from cascade.rerank.config import RerankConfig

DEFAULT_CONFIG_FILE = "cascade.toml"
CONFIG_ENV_VAR = "CASCADE_CONFIG"
ENV_PREFIX = "CASCADE_"
ENV_NESTED_DELIMITER = "__"


class FeatureStoreConfig(ComponentConfig):
    """How serving treats the online feature store (Redis) when it is down or slow."""

    timeout_ms: float = Field(
        100.0,
        gt=0,
        description="Bound on every Redis call (connect, read, write); never retried by the client itself. "
        "A Recommend with at least this long to wait for features reads them in its own thread.",
    )
    read_share: float = Field(
        0.4,
        gt=0,
        le=1,
        description="Share of a Recommend's remaining deadline that reading the user's features may take; "
        "past it the request goes on without waiting (degraded) and the read finishes in the background.",
    )
    read_threads: int = Field(8, ge=1, description="Threads reading user features from Redis.")
    max_pending_reads: int = Field(
        64, ge=1, description="Reads in flight at most; beyond, requests answer without the store (degraded)."
    )
    breaker_failures: int = Field(
        3, ge=1, description="Consecutive failed Redis calls that open the circuit breaker."
    )
    breaker_reset_s: float = Field(
        0.5,
        gt=0,
        description="Seconds an open breaker refuses calls before it lets a trial call through. A probe "
        "reads Redis that often (the keyspace pointer): the breaker closes soon after Redis returns, and a "
        "`cascade features load` that moves users to a new keyspace is followed within this time.",
    )
    stale_cache_size: int = Field(
        20_000,
        ge=0,
        description="Users whose last features read is kept in-process, to answer them personalised "
        "(flagged stale_features) while Redis cannot.",
    )
    stale_max_age_s: float = Field(
        900.0, gt=0, description="Oldest cached features served while Redis cannot answer."
    )
    replica_acks: int = Field(
        1,
        ge=0,
        description="Replicas of the user's master (of those in sync) that must hold an event before "
        "RecordEvent acknowledges it (Redis WAIT), so that a failover cannot lose it; past the wait the "
        "event is refused UNAVAILABLE, and a retry with the same event_id stores it once. A master with no "
        "replica in sync acknowledges alone; 0 never waits.",
    )
    replica_ack_timeout_ms: float = Field(
        50.0, gt=0, description="Longest wait for replicas to acknowledge an event; below timeout_ms."
    )

    @model_validator(mode="after")
    def _replica_wait_within_the_call_bound(self) -> FeatureStoreConfig:
        if self.replica_ack_timeout_ms >= self.timeout_ms:
            raise ValueError(
                f"replica_ack_timeout_ms ({self.replica_ack_timeout_ms:g}) must be below timeout_ms "
                f"({self.timeout_ms:g}): the wait is part of the write's call"
            )
        return self


class TracingConfig(ComponentConfig):
    """OpenTelemetry traces: a span per RPC and per Recommend stage (needs the ``tracing`` extra)."""

    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/gRPC collector to export spans to, e.g. 'localhost:4317'; unset: no tracing, at "
        "no cost.",
    )
    service_name: str = Field("cascade", description="service.name of the exported spans.")
    sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of traces started here that are kept (a caller's decision wins)."
    )


class AuthConfig(ComponentConfig):
    """Callers authenticate with API keys carrying scopes (cascade/serving/auth.py)."""

    api_keys_path: Path | None = Field(
        None,
        description="TOML file of the keys in force, by SHA-256 with their scopes (cascade keys create "
        "writes it); read again when it changes. Keys may also come from CASCADE_API_KEYS. Neither: no "
        "authentication, allowed only on a loopback address unless allow_unauthenticated.",
    )
    reload_interval_s: float = Field(
        1.0, ge=0, description="How often a call may find the keys file changed and read it again."
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Serve a non-loopback address without API keys: every caller that reaches the port "
        "may record events and read profiles. For a port only a trusted proxy reaches.",
    )


class TLSConfig(ComponentConfig):
    """TLS of the gRPC port: the server's side (cert_file, key_file, and client_ca_file for mutual TLS)
    and the client's (ca_file, client_cert_file, client_key_file), which the command line and
    ``CascadeClient.for_config`` use. Files are PEM; the server reads its own again when they change."""

    cert_file: Path | None = Field(
        None, description="The server's certificate chain. With key_file: the port serves TLS only."
    )
    key_file: Path | None = Field(None, description="The server's private key.")
    client_ca_file: Path | None = Field(
        None,
        description="Mutual TLS: clients must present a certificate signed by this CA; a handshake "
        "without one, or with another CA's, fails before any call.",
    )
    ca_file: Path | None = Field(
        None, description="Client side: the CA the server's certificate is checked against (unset: the "
        "system's roots)."
    )  # fmt: skip
    client_cert_file: Path | None = Field(
        None, description="Client side: the certificate presented to a mutual-TLS server."
    )
    client_key_file: Path | None = Field(None, description="Client side: its private key.")
    server_name: str | None = Field(
        None,
        description="Client side: the name the server's certificate must carry when it is not the "
        "target's host (e.g. connecting by address to a certificate for a DNS name).",
    )

    @model_validator(mode="after")
    def _pairs(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file: set both (TLS) or neither")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file: mutual TLS needs the server's cert_file and key_file")
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("client_cert_file and client_key_file: set both or neither")
        return self

    @property
    def serves(self) -> bool:
        return self.cert_file is not None

    @property
    def client_uses(self) -> bool:
        """Whether a client of this config connects with TLS."""
        return self.serves or self.ca_file is not None or self.client_cert_file is not None


class ServingConfig(ComponentConfig):
    host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    port: int = Field(50051, ge=0, le=65535, description="Port the gRPC server binds; 0 picks a free one.")
    workers: int = Field(
        8,
        ge=1,
        description="Recommend requests computed at once; others wait in the queue (`queue_size`).",
    )
    similar_items_workers: int = Field(4, ge=1, description="SimilarItems requests computed at once.")
    record_event_workers: int = Field(4, ge=1, description="RecordEvent requests computed at once.")
    queue_size: int = Field(
        16,
        ge=0,
        description="Requests of each method waiting for one of its workers; a request beyond it is "
        "refused at once with RESOURCE_EXHAUSTED, so an overloaded server sheds load instead of "
        "answering everyone late. Each method has its own workers and queue: one stalled never delays "
        "another, nor health checks.",
    )
    max_queue_wait_ms: float = Field(
        1000.0,
        gt=0,
        description="Longest a request waits in the queue (less when its deadline is nearer) before "
        "RESOURCE_EXHAUSTED.",
    )
    deadline_margin_ms: float = Field(
        1.0,
        ge=0,
        description="Time kept back from each call's deadline for the answer to reach the caller.",
    )
    event_dedupe_window_s: int = Field(
        86_400,
        ge=0,
        description="How long a RecordEvent's event_id is remembered: a retry within it is recorded "
        "once. 0 turns de-duplication off.",
    )
    drain_s: float = Field(
        5.0,
        ge=0,
        description="On SIGTERM: seconds health says NOT_SERVING while the port still answers, so "
        "balancers stop sending before the port closes.",
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="After the drain: seconds in-flight requests get to finish."
    )
    validate_artifacts_in_child: bool = Field(
        True,
        description="Parse every file of a newly published version in a child process before loading it, "
        "so that a corrupt file that crashes a native parser (LightGBM's, FAISS's) kills the child, "
        "not the server.",
    )
    feature_store: FeatureStoreConfig = Field(default_factory=FeatureStoreConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    tls: TLSConfig = Field(default_factory=TLSConfig)
    max_k: int = Field(200, ge=1, description="Largest k a Recommend request may ask for.")
    max_exclude_ids: int = Field(1000, ge=0, description="Most exclude_item_ids one request may carry.")
    max_paged_items: int = Field(
        500,
        ge=1,
        description="Most items a Recommend request's pages reach in all: the last page ends there.",
    )
    page_token_ttl_s: int = Field(
        600, ge=1, description="How long a Recommend response's next_page_token stays valid, in seconds."
    )
    redis_url: str | None = Field(
        None,
        description="Redis to use as the online store; unset starts an embedded redis-server. "
        "redis://host:port/db for one server; redis-cluster://host:port[,host:port...] (or "
        "redis://host:port?cluster=true) for Redis Cluster; "
        "redis-sentinel://host:port[,host:port...]/service[/db] for the master Sentinel names "
        "(rediss-… for TLS).",
    )
    embedded_redis_path: Path = Field(
        Path("var/redis/cascade.db"), description="Database file of the embedded Redis server."
    )
    embedded_redis_fsync: Literal["always", "everysec"] = Field(
        "always",
        description="When the embedded Redis fsyncs its append-only log: always (before any reply, so an "
        "acknowledged event survives any crash) or everysec (faster writes; a crash of redis-server or "
        "of the machine can lose the last ~2 s of acknowledged events).",
    )
    user_cache_size: int = Field(100_000, ge=0, description="User feature rows cached in-process.")
    user_cache_ttl_s: float = Field(60.0, ge=0, description="Seconds a cached user feature row stays valid.")
    admin_enabled: bool = Field(
        True,
        description="Serve the CatalogueAdmin service (DeleteItem) beside Recommender on the same port; "
        "route it to the catalogue's owner only.",
    )
    reload_interval_s: float = Field(
        5.0,
        ge=0,
        description="How often the server checks the artifact store for newly published versions and "
        "swaps them in without a restart; 0 turns hot reloading off.",
    )
    max_similar_k: int = Field(200, ge=1, description="Largest k a SimilarItems request may ask for.")
    compute_threads: int = Field(
        1,
        ge=1,
        description="torch/FAISS (OpenMP) threads per request; requests already run in parallel. numpy's "
        "BLAS stays at one thread: its per-request products are small, and its spinning pool beside "
        "OpenMP's oversubscribes the CPUs.",
    )
    ranker_precision: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Precision of DIN's matrix products when serving (the attention's pair product and the "
        "MLP's layers): bfloat16 multiplies bf16 operands with float32 accumulation, faster on CPUs with "
        "AVX512-BF16 and on GPUs, and many times slower on CPUs without bfloat16 instructions, where torch "
        "emulates it; scores then differ from float32 by about 1e-3. Other rankers serve in float32.",
    )
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="Server processes sharing the port (SO_REUSEPORT), each with its own models and "
        "thread pool, so Python work of concurrent requests is not serialised by one GIL. Above 1 the "
        "port must be fixed (not 0).",
    )
    metrics_port: int | None = Field(
        9464,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics endpoint (latency and codes per method, stages, "
        "degraded answers, shed requests, breaker state, model versions, process CPU and memory); process "
        "i of `processes` uses metrics_port + i; 0 picks a free port. On by default.",
    )
    process_ports: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="First of `processes` consecutive ports, one per server process (process i also "
        "listens on process_ports + i), so that clients balance requests, not connections, over the "
        "processes: gRPC's round_robin policy over these addresses. The shared port spreads connections "
        "only, and a client's few long-lived connections rarely split evenly. Unset: the shared port only.",
    )

    @model_validator(mode="after")
    def _process_ports_clear_of_port(self) -> ServingConfig:
        if self.process_ports is not None:
            last = self.process_ports + self.processes - 1
            if last > 65535:
                raise ValueError(
                    f"process_ports: {self.process_ports} + {self.processes} processes passes 65535"
                )
            if self.process_ports <= self.port <= last:
                raise ValueError(
                    f"process_ports: {self.process_ports}..{last} must not include port ({self.port})"
                )
        return self

    def process_addresses(self) -> list[str]:
        """HOST:PORT of each process's own port (empty without ``process_ports``)."""
        if self.process_ports is None:
            return []
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return [f"{host}:{self.process_ports + i}" for i in range(self.processes)]


class AppConfig(ComponentConfig):
    seed: int = Field(42, description="The one seed for numpy, torch and FAISS.")
    artifacts_dir: Path = Field(Path("artifacts"), description="Root of the versioned artifact store.")
    artifact_signing_key_file: Path | None = Field(
        None,
        description="File holding a secret key: every artifact published is signed with it (HMAC-SHA256 of "
        "its manifest) and every artifact read must carry a valid signature, so that a file changed and "
        "its manifest re-sealed by someone without the key is refused. Unset: no signatures.",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    recall: RecallConfig = Field(default_factory=RecallConfig)
    ranking: RankingConfig = Field(default_factory=RankingConfig)
    rerank: RerankConfig = Field(default_factory=RerankConfig)
    customers: CustomersConfig = Field(default_factory=CustomersConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    offline: OfflineConfig = Field(default_factory=OfflineConfig)

    def pseudonyms(self) -> Pseudonymiser:
        """User pseudonyms with the configured key (``privacy``): feature-store keys, deny-lists, logs."""
        return Pseudonymiser.from_config(self.privacy)

    def artifact_store(self) -> ArtifactStore:
        """The artifact store at ``artifacts_dir``, signing and checking with the configured key."""
        key = None
        if self.artifact_signing_key_file is not None:
            key = self.artifact_signing_key_file.read_bytes().strip()
            if len(key) < 16:
                raise ValueError(
                    f"artifact_signing_key_file: {self.artifact_signing_key_file} holds under 16 bytes"
                )
        return ArtifactStore(self.artifacts_dir, signing_key=key)

    def resolved_json(self) -> str:
        """The whole config as JSON, secrets masked: what is logged, printed and stored in artifacts."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    def child_json(self) -> str:
        """The whole config as JSON with its secrets, for a process this one starts (never for a log, a
        print or an artifact): ``resolved_json`` would hand it a masked key."""
        raw = self.model_dump(mode="json")
        if self.privacy.pseudonym_key is not None:
            raw["privacy"]["pseudonym_key"] = self.privacy.pseudonym_key.get_secret_value()
        return json.dumps(raw, sort_keys=True)


class _EnvironmentConfig(AppConfig, BaseSettings):
    """AppConfig with every key also read from the environment, where it wins over the file:
    ``CASCADE_SEED``, ``CASCADE_SERVING__PORT``, ``CASCADE_SERVING__FEATURE_STORE__TIMEOUT_MS``, ... (a
    misspelt nested key fails like one in the file)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, extra="forbid", frozen=True
    )

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, **_unused):  # type: ignore[override]
        return (env_settings, init_settings)


def load_config(path: Path | str | None = None) -> AppConfig:
    """Load the app config from TOML (or JSON), then the environment over it: ``CASCADE_<SECTION>__<KEY>``
    for every key, and ``REDIS_URL`` for ``serving.redis_url`` (below ``CASCADE_SERVING__REDIS_URL``).

    Without a path, ``$CASCADE_CONFIG`` is used, else ``./cascade.toml`` if present, else the defaults.
    """
    if path is None:
        env_path = os.environ.get(CONFIG_ENV_VAR)
        path = Path(env_path) if env_path else Path(DEFAULT_CONFIG_FILE)
        if not env_path and not path.exists():
            path = None
    raw = read_config_file(path) if path is not None else {}
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        raw.setdefault("serving", {})["redis_url"] = redis_url
    return AppConfig.model_validate(_EnvironmentConfig(**raw).model_dump())
