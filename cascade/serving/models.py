"""Everything serving loads from the artifact store, loaded and checked together."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cascade.core.artifacts import ArtifactStore
from cascade.core.errors import ArtifactError
from cascade.core.schema import SCHEMA_VERSION, FeatureSchema, ItemFeatures
from cascade.ranking.als_features import ALSFeatures
from cascade.ranking.features import RankingFeatureBuilder
from cascade.ranking.ranker import Ranker, load_ranker
from cascade.ranking.rating_features import RatingFeatureModels
from cascade.ranking.statistics import ItemStatistics
from cascade.recall.channels import CooccurrenceRules, SegmentPopularity
from cascade.recall.index import ItemIndex
from cascade.recall.two_tower import TwoTowerModel
from cascade.recall.user_query import UserQueryEncoder

logger = logging.getLogger(__name__)

SCHEMA_FILE = "schema.json"
CATALOGUE_FILE = "catalogue.parquet"
POPULARITY_FILE = "popularity.npy"
QUERY_SAMPLE_FILE = "query_sample.npz"
SERVED_KINDS = ("recall", "index", "ranking")  # the artifact kinds serving loads together
INNER_PREFIX = "inner_"  # the recall artifact's validation-split model, which ranking trains from
ITEM_STATISTICS_FILE = "item_statistics.npz"  # in the ranking artifact: what its features are computed from


@dataclass(frozen=True)
class ServingModels:
    schema: FeatureSchema
    items: ItemFeatures  # row i = item index i
    titles: np.ndarray  # (num_items,) object, row i = item index i
    popularity: np.ndarray  # (num_items,) training interaction counts
    popular_order: np.ndarray  # item indices, most popular first
    two_tower: TwoTowerModel
    user_query: UserQueryEncoder  # two_tower's user tower for one served user, in numpy
    index: ItemIndex
    cooccurrence: CooccurrenceRules
    segment_popularity: SegmentPopularity
    ranker: Ranker
    ranking_features: RankingFeatureBuilder
    versions: dict[str, str]

    @classmethod
    def load(cls, store: ArtifactStore) -> ServingModels:
        recall_ref = store.require("recall")
        index_ref = store.require("index")
        ranking_ref = store.require("ranking")
        for ref in (recall_ref, index_ref, ranking_ref):
            ref.verify()
            if ref.manifest.get("schema_version") != SCHEMA_VERSION:
                raise ArtifactError(
                    f"{ref.kind}/{ref.version} has schema version "
                    f"{ref.manifest.get('schema_version')}, this code reads {SCHEMA_VERSION}"
                )
        built_from = index_ref.manifest["parents"].get("recall")
        if built_from != recall_ref.version:
            raise ArtifactError(
                f"index {index_ref.version} was built from recall {built_from}, but the current recall is "
                f"{recall_ref.version}; run `cascade rebuild-index`"
            )
        schema = FeatureSchema.load(recall_ref.file(SCHEMA_FILE))
        catalogue = pd.read_parquet(recall_ref.file(CATALOGUE_FILE))
        items = schema.item_table(catalogue)
        titles = np.full(schema.num_items, "", dtype=object)
        titles[schema.item_index(catalogue["item_id"].to_numpy())] = catalogue["title"].to_numpy()
        popularity = np.load(recall_ref.file(POPULARITY_FILE), allow_pickle=False)
        popular_order = np.argsort(-popularity[1:], kind="stable") + 1
        index = ItemIndex.load(index_ref.path)
        if index.size != schema.num_items - 1:
            raise ArtifactError(f"index holds {index.size} items, the schema {schema.num_items - 1}")
        ranker = load_ranker(ranking_ref.path)
        logger.info(
            "loaded recall %s, index %s, ranking %s",
            recall_ref.version,
            index_ref.version,
            ranking_ref.version,
        )
        cooccurrence = CooccurrenceRules.load(recall_ref.path)
        two_tower = TwoTowerModel.load(recall_ref.path)
        return cls(
            schema=schema,
            items=items,
            titles=titles,
            popularity=popularity,
            popular_order=popular_order,
            two_tower=two_tower,
            user_query=UserQueryEncoder(two_tower.user_tower),
            index=index,
            cooccurrence=cooccurrence,
            segment_popularity=SegmentPopularity.load(recall_ref.path),
            ranker=ranker,
            ranking_features=RankingFeatureBuilder(
                schema,
                items,
                ItemStatistics.load(ranking_ref.file(ITEM_STATISTICS_FILE)),
                ranking_ref.manifest["config"]["features"]["history_length"],
                item_vectors=index.embeddings,
                relations=cooccurrence,
                ratings=(
                    RatingFeatureModels.load(ranking_ref.path, schema, items)
                    if ranker.config.rating_models
                    else None
                ),
                preferences=(ALSFeatures.load(ranking_ref.path) if ranker.config.als_factors > 0 else None),
            ),
            versions={
                "recall": recall_ref.version,
                "index": index_ref.version,
                "ranking": ranking_ref.version,
            },
        )
