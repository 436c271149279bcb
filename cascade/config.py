"""The app config: each component's config, composed into one model that one TOML file loads.

Each section's fields are described beside the component that reads them: ``[data]`` in
``cascade.data.config``, ``[features]`` in ``cascade.core.config`` (the feature schema's), ``[recall]`` in
``cascade.recall.config``, ``[ranking]`` in ``cascade.ranking.config`` (one sub-config per ranker),
``[rerank]`` in ``cascade.rerank.config``. ``[serving]`` is here: it configures the deployment as a whole,
which the server, the bench harness and the CLI all read, and this module sits below the server in the
import layers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from cascade.core.config import ComponentConfig, FeatureConfig, read_config_file
from cascade.data.config import DataConfig
from cascade.ranking.config import RankingConfig
from cascade.recall.config import RecallConfig
from cascade.rerank.config import RerankConfig

DEFAULT_CONFIG_FILE = "cascade.toml"
CONFIG_ENV_VAR = "CASCADE_CONFIG"


class ServingConfig(ComponentConfig):
    host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    port: int = Field(50051, ge=0, le=65535, description="Port the gRPC server binds; 0 picks a free one.")
    workers: int = Field(8, ge=1, description="Threads serving requests.")
    max_k: int = Field(200, ge=1, description="Largest k a Recommend request may ask for.")
    max_exclude_ids: int = Field(1000, ge=0, description="Most exclude_item_ids one request may carry.")
    redis_url: str | None = Field(
        None, description="Redis to use as the online store; unset starts an embedded redis-server."
    )
    embedded_redis_path: Path = Field(
        Path("var/redis/cascade.db"), description="Database file of the embedded Redis server."
    )
    user_cache_size: int = Field(100_000, ge=0, description="User feature rows cached in-process.")
    user_cache_ttl_s: float = Field(60.0, ge=0, description="Seconds a cached user feature row stays valid.")
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
        None,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics endpoint (stage and request latency histograms, "
        "requests by status code); process i of `processes` uses metrics_port + i. Unset: no endpoint.",
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
    data: DataConfig = Field(default_factory=DataConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    recall: RecallConfig = Field(default_factory=RecallConfig)
    ranking: RankingConfig = Field(default_factory=RankingConfig)
    rerank: RerankConfig = Field(default_factory=RerankConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)

    def resolved_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


def load_config(path: Path | str | None = None) -> AppConfig:
    """Load the app config from TOML (or JSON); ``REDIS_URL`` in the environment overrides
    ``serving.redis_url``.

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
    return AppConfig.model_validate(raw)
