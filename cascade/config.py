"""Typed configuration: one pydantic model per stage, composed into one app config loaded from TOML.

Every model forbids unknown keys so that a typo in ``cascade.toml`` fails loudly instead of being ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field

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


class RecallConfig(StageConfig):
    embedding_dim: int = Field(64, ge=4, le=1024, description="Output dimension of both towers.")
    hidden_dim: int = Field(128, ge=4, description="Width of each tower's hidden layer.")
    epochs: int = Field(20, ge=1, description="Training epochs over the training interactions.")
    batch_size: int = Field(
        1024, ge=8, description="Interactions per step; the rest of the batch are negatives."
    )
    learning_rate: float = Field(3e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(1e-6, ge=0, description="Adam weight decay.")
    temperature: float = Field(0.07, gt=0, description="Softmax temperature over cosine similarities.")
    logq_correction: bool = Field(
        True, description="Subtract log item frequency from in-batch logits (popular items are over-sampled)."
    )
    user_id_dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of steps' users whose id is hidden, so the tower learns cold start.",
    )
    num_candidates: int = Field(300, ge=1, description="Candidates recall hands to ranking per request.")
    index_factory: str = Field("Flat", description="FAISS index factory string; inner-product metric.")
    index_min_recall: float = Field(
        0.95, ge=0, le=1, description="rebuild-index refuses to publish below this recall@k against exact."
    )


class RankingConfig(StageConfig):
    type: Literal["wide_deep"] = Field("wide_deep", description="Which ranker to train and serve.")
    embedding_dim: int = Field(16, ge=2, description="Embedding width of each categorical feature.")
    hidden_dims: tuple[int, ...] = Field((128, 64), description="Widths of the deep part's MLP layers.")
    wide_crosses: tuple[tuple[str, str], ...] = Field(
        (("gender", "genre"), ("age", "genre"), ("occupation", "genre")),
        description="Cross-product transformations of the wide part, as pairs of feature names.",
    )
    epochs: int = Field(4, ge=1, description="Training epochs over the labelled recall candidates.")
    batch_size: int = Field(2048, ge=8, description="Candidates per training step.")
    learning_rate: float = Field(2e-3, gt=0, description="Adam learning rate.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout between MLP layers.")
    training_candidates: int = Field(
        300, ge=10, description="Recall candidates per user labelled for training the ranker."
    )


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
    compute_threads: int = Field(
        1, ge=1, description="torch/FAISS threads per request; requests already run in parallel."
    )


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
    """Load the app config from TOML; ``REDIS_URL`` in the environment overrides ``serving.redis_url``.

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
            raw = tomllib.load(fh)
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        raw.setdefault("serving", {})["redis_url"] = redis_url
    return AppConfig.model_validate(raw)
