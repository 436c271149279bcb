"""The ranking artifact's files: written and read here, and nowhere else.

A ranking artifact holds the trained ranker and what its features are computed from at request time::

    ranker.json + the model's files     the ranker (``cascade.ranking.ranker``: type, config, features)
    item_statistics.npz                  item counts, ratings and event times over the whole training part
    rating_models.{safetensors,json}     the rating models behind the predicted-rating features (if any)
    als_features.{safetensors,json}      the ALS item factors behind the preference features (if any)

Its manifest records the recall version it was trained from (``parents``) and the config of that run, so
serving reads the history length the features were built with from here, not from the live config.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cascade.core.artifacts import ArtifactBundle
from cascade.core.schema import FeatureSchema, ItemFeatures
from cascade.ranking.als_features import ALSFeatures
from cascade.ranking.ranker import Ranker
from cascade.ranking.rating_features import RatingFeatureModels
from cascade.ranking.registry import load_ranker
from cascade.ranking.statistics import ItemStatistics

RANKING = "ranking"
ITEM_STATISTICS_FILE = "item_statistics.npz"


@dataclass(frozen=True)
class RankingParts:
    """Everything `cascade train ranking` publishes; see the module's docstring for each file."""

    ranker: Ranker
    statistics: ItemStatistics
    ratings: RatingFeatureModels | None
    preferences: ALSFeatures | None

    def write(self, folder: Path) -> None:
        """Write every file into ``folder`` (the store's temp folder of a new version)."""
        self.ranker.save(folder)
        self.statistics.save(folder / ITEM_STATISTICS_FILE)
        if self.ratings is not None:
            self.ratings.save(folder)
        if self.preferences is not None:
            self.preferences.save(folder)


class RankingBundle(ArtifactBundle):
    """Reads a published ranking artifact; each part is loaded on first use."""

    KIND = RANKING

    @property
    def trained_from(self) -> str | None:
        """The recall version whose candidates the ranker was trained on."""
        return self.parent("recall")

    @cached_property
    def ranker(self) -> Ranker:
        return load_ranker(self.ref.path)

    def statistics(self) -> ItemStatistics:
        return ItemStatistics.load(self.ref.file(ITEM_STATISTICS_FILE))

    def ratings(self, schema: FeatureSchema, items: ItemFeatures) -> RatingFeatureModels | None:
        """The rating-feature models, None when the ranker was trained without them."""
        if not self.ranker.config.rating_models:
            return None
        return RatingFeatureModels.load(self.ref.path, schema, items)

    def preferences(self) -> ALSFeatures | None:
        """The ALS preference features, None when the ranker was trained without them."""
        if self.ranker.config.als_factors == 0:
            return None
        return ALSFeatures.load(self.ref.path)
