"""Typed configuration: one pydantic model per stage, composed into one app config loaded from TOML.

Every model forbids unknown keys so that a typo in ``cascade.toml`` fails loudly instead of being ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_CONFIG_FILE = "cascade.toml"
CONFIG_ENV_VAR = "CASCADE_CONFIG"


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(StageConfig):
    dataset: str = Field("movielens-100k", description="Name of the prepared dataset under data_dir to use.")
    data_dir: Path = Field(Path("data"), description="Folder holding prepared datasets, one sub-folder each.")
    holdout_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of each user's latest interactions held out for evaluation."
    )
    positive_min_rating: float = Field(
        4.0, description="Held-out interactions rated at least this are the positives of every evaluation."
    )


class FeatureConfig(StageConfig):
    max_genres: int = Field(6, ge=1, le=32, description="Genre lists are padded or truncated to this length.")
    title_length: int = Field(
        15, ge=1, le=64, description="Title word-id lists are padded/truncated to this."
    )
    history_length: int = Field(
        50, ge=1, le=1000, description="Most recent interactions kept per user as behaviour history."
    )
    zip_prefix_length: int = Field(
        2, ge=1, le=5, description="Leading zip-code characters kept as the user's region feature."
    )


class RecallConfig(StageConfig):
    embedding_dim: int = Field(64, ge=4, le=1024, description="Output dimension of both towers.")
    hidden_dim: int = Field(128, ge=4, description="Width of each tower's hidden layer.")
    epochs: int = Field(
        30,
        ge=1,
        description="Most training epochs; early stopping on validation Recall@100 usually ends sooner.",
    )
    early_stopping_patience: int = Field(
        3, ge=1, description="Epochs without a better validation Recall@100 before training stops."
    )
    max_steps_per_epoch: int | None = Field(
        None,
        ge=1,
        description="Most optimiser steps per epoch, each on a fresh random batch of interactions; unset "
        "runs every interaction once. Bounds training time on very large data (the benchmark scenarios).",
    )
    batch_size: int = Field(
        1024, ge=8, description="Interactions per step; the rest of the batch are negatives."
    )
    uniform_negatives: int = Field(
        1024, ge=0, description="Items drawn uniformly from the catalogue per step as extra negatives."
    )
    history_gap_max: int = Field(
        20,
        ge=0,
        description="A training example's history ends up to this many interactions before its target, "
        "drawn uniformly, so the model learns to predict the next several items, as serving and evaluation "
        "ask, not only the very next one.",
    )
    history_pooling: Literal["mean", "attention"] = Field(
        "attention", description="How the user tower pools the item embeddings of the user's recent history."
    )
    learning_rate: float = Field(3e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(1e-6, ge=0, description="Adam weight decay.")
    temperature: float = Field(0.07, gt=0, description="Softmax temperature over cosine similarities.")
    logq_correction: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Weight of the log-Q correction of sampled logits: 1 removes the sampling bias towards "
        "popular items fully, 0 keeps it (and with it a popularity prior).",
    )
    user_id_dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of steps' users whose id is hidden, so the tower learns cold start.",
    )
    item_id_dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of items whose id is hidden, so the item tower learns to embed from content.",
    )
    validation_users: int = Field(
        2000, ge=1, description="Users sampled for validation Recall@100 after each epoch (all when fewer)."
    )
    num_candidates: int = Field(
        300, ge=1, description="Quota of the two-tower ANN channel: candidates it hands to ranking."
    )
    cooccurrence_candidates: int = Field(
        50, ge=0, description="Quota of the item co-occurrence channel (from the user's recent items)."
    )
    segment_popular_candidates: int = Field(
        50, ge=0, description="Quota of the popular-in-segment channel, used for users with no history."
    )
    cooccurrence_window: int = Field(
        10, ge=1, description="Two interactions at most this many apart in a user's history co-occur."
    )
    cooccurrence_min_support: int = Field(
        3, ge=1, description="A rule X -> Y needs X and Y to co-occur at least this many times."
    )
    cooccurrence_min_confidence: float = Field(
        0.05, ge=0, le=1, description="A rule X -> Y needs support(X, Y) / occurrences(X) at least this."
    )
    cooccurrence_neighbours: int = Field(50, ge=1, description="Rules kept per item X, strongest first.")
    cooccurrence_recent_items: int = Field(
        10, ge=1, description="How many of the user's most recent items feed the co-occurrence channel."
    )
    segment_popular_top: int = Field(500, ge=1, description="Items kept per gender x age segment.")
    index_factory: str = Field(
        "Flat", description="FAISS index factory string (Flat, IVF1024,Flat, HNSW32, IVF1024,PQ16x8...)."
    )
    index_target_recall: float = Field(
        0.95,
        gt=0,
        le=1,
        description="nprobe / efSearch are tuned at build time to the smallest value reaching this "
        "recall@num_candidates against exact search on held-out queries.",
    )
    index_min_recall: float = Field(
        0.95, ge=0, le=1, description="rebuild-index refuses to publish below this recall@k against exact."
    )


class RankingConfig(StageConfig):
    type: Literal["wide_deep", "din", "lightgbm"] = Field(
        "lightgbm", description="Which ranker `train ranking` trains and the service serves."
    )
    embedding_dim: int = Field(
        16, ge=2, description="Wide&Deep: embedding width of each categorical feature."
    )
    hidden_dims: tuple[int, ...] = Field((128, 64), description="Wide&Deep: widths of the deep MLP layers.")
    wide_crosses: tuple[tuple[str, str], ...] = Field(
        (("gender", "genre"), ("age", "genre"), ("occupation", "genre"), ("history", "item")),
        description="Wide&Deep: cross-product transformations of the wide part, as pairs of feature names; "
        "('history', 'item') crosses each recent item with the candidate.",
    )
    wide_hash_buckets: int = Field(
        1_000_003,
        ge=1,
        description="A cross with more value pairs than this is hashed into this many weights (a prime, so "
        "that structured ids spread evenly).",
    )
    din_item_dim: int = Field(48, ge=2, description="DIN: item-id embedding width of behaviours/candidates.")
    din_genre_dim: int = Field(
        16, ge=2, description="DIN: genre embedding width; an item is [item, mean genre] embeddings."
    )
    din_user_dim: int = Field(8, ge=2, description="DIN: embedding width of each user-side categorical.")
    din_attention_hidden: tuple[int, ...] = Field(
        (36,), description="DIN: hidden widths of the activation unit scoring each behaviour (paper: 36)."
    )
    din_attention_activation: Literal["prelu", "dice"] = Field(
        "prelu", description="DIN: activation inside the activation unit."
    )
    din_hidden_dims: tuple[int, ...] = Field((200, 80), description="DIN: widths of the final MLP (paper).")
    din_activation: Literal["prelu", "dice"] = Field("dice", description="DIN: activation of the final MLP.")
    epochs: int = Field(6, ge=1, description="Neural rankers: most epochs; the best on validation is kept.")
    batch_size: int = Field(2048, ge=8, description="Neural rankers: candidates per training step.")
    learning_rate: float = Field(2e-3, gt=0, description="Neural rankers: Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Neural rankers: Adam weight decay.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Neural rankers: dropout between MLP layers.")
    lgb_rounds: int = Field(300, ge=1, description="LightGBM: most boosting rounds (cross-validation picks).")
    lgb_learning_rate: float = Field(0.05, gt=0, description="LightGBM: shrinkage.")
    lgb_num_leaves: int = Field(31, ge=2, description="LightGBM: leaves per tree.")
    lgb_min_data_in_leaf: int = Field(50, ge=1, description="LightGBM: smallest leaf.")
    lgb_objectives: tuple[Literal["lambdarank", "rank_xendcg"], ...] = Field(
        ("lambdarank", "rank_xendcg"),
        min_length=1,
        description="LightGBM: ranking objectives tried; the objective and round count with the best mean "
        "NDCG@10 over the cross-validation folds are kept.",
    )
    lgb_cv_folds: int = Field(
        5,
        ge=2,
        description="LightGBM: folds of the training users that pick the objective and the round count "
        "(one held-out share of ~90 users picked them noisily on MovieLens-100K).",
    )
    rating_models: tuple[Literal["pmf", "hybrid", "autorec"], ...] = Field(
        ("pmf", "hybrid", "autorec"),
        description="Rating models whose predicted rating of each candidate is a ranking feature, trained on "
        "the same window as the ranker's other features. I-AutoRec keeps a (items, 500) code table and "
        "trains over (users,)-wide item columns: leave it out for catalogues of millions.",
    )
    als_factors: int = Field(
        64,
        ge=0,
        description="Factors of the implicit ALS model whose score of each candidate, and that score's rank "
        "in the request, are ranking features (the user factor folded in from the request's history); "
        "trained on the same window as the other features. 0 turns the two features off.",
    )
    als_regularization: float = Field(0.1, ge=0, description="ALS features: L2 regularisation.")
    als_alpha: float = Field(
        10.0, gt=0, description="ALS features: confidence of an interaction (1 for the rest, as in implicit)."
    )
    als_iterations: int = Field(15, ge=1, description="ALS features: alternating sweeps.")
    validation_share: float = Field(
        0.1, gt=0, lt=1, description="Share of training users held out to pick epochs / rounds."
    )
    training_candidates: int = Field(
        300, ge=10, description="Two-tower candidates per user labelled for training the ranker."
    )
    max_training_users: int | None = Field(
        None,
        ge=10,
        description="Users (seeded sample) whose candidates train the ranker; unset uses every user with "
        "held-out positives. Bounds example count on very large data.",
    )
    recent_window_days: float = Field(
        7.0, gt=0, description="Window of the 'recent popularity' feature, before the request time."
    )
    threads: int = Field(2, ge=1, description="Threads for training (LightGBM, torch).")


class RerankConfig(StageConfig):
    filter_seen: bool = Field(True, description="Drop items the user has already interacted with.")


class ServingConfig(StageConfig):
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
        "AVX512-BF16 and on GPUs; scores then differ from float32 by about 1e-3. Other rankers serve in "
        "float32.",
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


class AppConfig(StageConfig):
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
    raw: dict = {}
    if path is not None:
        with open(path, "rb") as fh:
            # JSON reads back a resolved config as saved in artifact manifests or passed between processes
            raw = json.load(fh) if Path(path).suffix == ".json" else tomllib.load(fh)
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        raw.setdefault("serving", {})["redis_url"] = redis_url
    return AppConfig.model_validate(raw)
