"""The Ranker interface: fit / score / its serving form / save / load, and what every ranker records about
the features it was trained on. The rankers: ``cascade.ranking.lightgbm_ranker`` and
``cascade.ranking.torch_ranker`` (DIN and Wide&Deep); ``cascade.ranking.registry`` picks one by type."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cascade.core.errors import ArtifactError
from cascade.core.schema import RECALL_CHANNELS, FeatureSchema
from cascade.ranking.config import RankingConfig
from cascade.ranking.features import FEATURES_VERSION, RankingBatch, dense_feature_names

logger = logging.getLogger(__name__)

RANKER_META = "ranker.json"
Validation = tuple[RankingBatch, np.ndarray]
RequestScorer = Callable[[RankingBatch], np.ndarray]  # one request's candidates -> (B,) float32 scores


def dense_features_of(config: RankingConfig) -> tuple[str, ...]:
    """The dense columns a ranker with ``config`` is trained and served on: the base features, one per
    configured rating model, and the ALS pair when ranking.als_factors is set."""
    return dense_feature_names(config.rating_models, config.als_factors > 0)


def check_features(meta: dict, folder: Path) -> None:
    trained_on = (meta.get("dense_features"), meta.get("features_version"))
    config = meta.get("config", {})
    als = config.get("als_factors", 0) > 0
    builds = (list(dense_feature_names(config.get("rating_models", []), als)), FEATURES_VERSION)
    if trained_on != builds:
        raise ArtifactError(
            f"ranker in {folder} was trained on features {trained_on}, this code builds {builds}; "
            "retrain with `cascade train ranking`"
        )


def cardinalities(schema: FeatureSchema) -> dict[str, int]:
    names = ("user", "gender", "age", "occupation", "zip", "item", "genre", "year")
    return {name: schema.cardinality(name) for name in names} | {"channel": len(RECALL_CHANNELS) + 1}


class Ranker(ABC):
    type: str
    config: RankingConfig

    @abstractmethod
    def fit(
        self,
        batch: RankingBatch,
        labels: np.ndarray,
        seed: int,
        progress: bool = True,
        validation: Validation | None = None,
    ) -> dict[str, float]:
        """Train on labelled candidates (labels (B,) 0/1); ``validation`` picks the neural rankers' epoch
        and joins LightGBM's cross-validation folds. Returns training metrics, with validation_gauc."""

    @abstractmethod
    def score(self, batch: RankingBatch) -> np.ndarray:
        """-> (B,) float32 probabilities that each candidate is a positive; higher is better."""

    def serving_form(self, precision: str = "float32") -> RequestScorer:
        """What a server calls per request: one request's batch -> (B,) scores, the same function as
        ``score``, built once at load. ``precision`` ("float32" or "bfloat16") applies where the ranker has
        a reduced-precision form; the others serve in float32 and say so."""
        if precision != "float32":
            logger.warning("the %s ranker has no %s form; it serves in float32", self.type, precision)
        return self.score

    @abstractmethod
    def save(self, folder: Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, folder: Path) -> Ranker: ...

    def _meta(self, config: RankingConfig, **extra) -> dict:
        return {
            "type": self.type,
            "dense_features": list(dense_features_of(config)),
            "features_version": FEATURES_VERSION,
            "config": config.model_dump(mode="json"),
            **extra,
        }
