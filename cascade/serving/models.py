"""Everything serving loads from the artifact store, read through each artifact's bundle, checked together
and put in its serving form."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cascade.config import AppConfig
from cascade.core.artifacts import ArtifactStore
from cascade.core.errors import ArtifactError
from cascade.core.schema import SCHEMA_VERSION, FeatureSchema, ItemFeatures
from cascade.ranking.bundle import RANKING, RankingBundle
from cascade.ranking.features import RankingBatch, RankingFeatureBuilder
from cascade.ranking.ranker import Ranker
from cascade.ranking.statistics import ItemStatistics
from cascade.recall.bundle import INDEX, RECALL, IndexBundle, RecallBundle
from cascade.recall.channels import RecallChannels
from cascade.recall.index import GrowingIndex, ItemIndex
from cascade.recall.training import embed_items
from cascade.recall.user_query import UserQueryEncoder
from cascade.rerank.catalogue import ItemAttributes

logger = logging.getLogger(__name__)

SERVED_KINDS = (RECALL, INDEX, RANKING)  # the artifact kinds serving loads together


@dataclass(frozen=True)
class ServingModels:
    schema: FeatureSchema
    items: ItemFeatures  # row i = item index i
    titles: np.ndarray  # (num_items,) object, row i = item index i
    popularity: np.ndarray  # (num_items,) training interaction counts
    popular_order: np.ndarray  # item indices, most popular first
    user_query: UserQueryEncoder  # the two-tower model's user tower for one served user
    index: ItemIndex | GrowingIndex
    channels: RecallChannels
    ranker: Ranker
    score: Callable[[RankingBatch], np.ndarray]  # the ranker's serving form: one request -> (B,) scores
    ranking_features: RankingFeatureBuilder
    history_length: int  # behaviours per user the models were trained on
    num_candidates: int  # the two-tower channel's quota: what the index's search knob was tuned for
    versions: dict[str, str]
    attributes: ItemAttributes  # what business rules see of each item
    # (M,) item-table rows -> (M, D) unit vectors from content alone (the item tower, loaded at first use):
    # how items added while serving are embedded
    embed_content: Callable[[ItemFeatures], np.ndarray] | None = None

    @property
    def trained_items(self) -> int:
        """Item indices below this are the trained catalogue's; the others were added while serving and are
        unknown to every model."""
        return self.schema.num_items

    @classmethod
    def load(
        cls, store: ArtifactStore, config: AppConfig, versions: dict[str, str] | None = None
    ) -> ServingModels:
        """The given recall, index and ranking versions (default: ``served_versions``), refused unless they
        load together. What training fixed (the history length, the features) comes from the artifacts;
        where the live config disagrees a warning says so and the artifacts win."""
        versions = served_versions(store) if versions is None else versions
        refs = {kind: store.get(kind, versions[kind]) for kind in SERVED_KINDS}
        for ref in refs.values():
            ref.verify()
            if ref.manifest.get("schema_version") != SCHEMA_VERSION:
                raise ArtifactError(
                    f"{ref.kind}/{ref.version} has schema version "
                    f"{ref.manifest.get('schema_version')}, this code reads {SCHEMA_VERSION}"
                )
        recall, index_bundle, ranking = (
            RecallBundle(refs[RECALL], config.pseudonyms()),
            IndexBundle(refs[INDEX]),
            RankingBundle(refs[RANKING]),
        )
        index_bundle.check_built_from(recall)
        _check_against_config(config, recall, index_bundle, ranking)
        schema, items = recall.schema, recall.items
        index = index_bundle.index()
        if index.size != schema.num_items - 1:
            raise ArtifactError(f"index holds {index.size} items, the schema {schema.num_items - 1}")
        ranker = ranking.ranker
        statistics = ranking.statistics()
        popularity = recall.popularity()
        channels = RecallChannels(
            recall.cooccurrence(), recall.segment_popularity(), config.recall, recall.item_item()
        )
        logger.info(
            "loaded recall %s, index %s, ranking %s", recall.version, index_bundle.version, ranking.version
        )
        return cls(
            schema=schema,
            items=items,
            titles=recall.titles(),
            popularity=popularity,
            popular_order=np.argsort(-popularity[1:], kind="stable") + 1,
            user_query=UserQueryEncoder.from_tower(recall.two_tower().user_tower),
            index=index,
            channels=channels,
            ranker=ranker,
            score=ranker.serving_form(config.serving.ranker_precision),
            ranking_features=RankingFeatureBuilder(
                schema,
                items,
                statistics,
                ranking.history_length,
                item_vectors=index.embeddings,
                relations=channels.cooccurrence,
                ratings=ranking.ratings(schema, items),
                preferences=ranking.preferences(),
                item_item=channels.item_item,
            ),
            history_length=ranking.history_length,
            num_candidates=index_bundle.tuned_for or config.recall.num_candidates,
            versions={RECALL: recall.version, INDEX: index_bundle.version, RANKING: ranking.version},
            attributes=_item_attributes(recall, schema, items, statistics, index.embeddings, popularity),
            embed_content=_content_embedder(recall),
        )


def _content_embedder(recall: RecallBundle) -> Callable[[ItemFeatures], np.ndarray]:
    """Embeds item-table rows from their content with the recall artifact's item tower, loaded at the first
    call (most servers never add an item; the model's id tables are large)."""
    loaded: list = []
    lock = threading.Lock()

    def embed(rows: ItemFeatures) -> np.ndarray:
        with lock:
            if not loaded:
                loaded.append(recall.two_tower())
        padded = ItemFeatures(  # row 0 is padding, as in every item table
            item=np.zeros(len(rows.item) + 1, dtype=np.int64),
            genres=np.vstack([np.zeros((1, rows.genres.shape[1]), dtype=np.int64), rows.genres]),
            title=np.vstack([np.zeros((1, rows.title.shape[1]), dtype=np.int64), rows.title]),
            year=np.concatenate([[0], rows.year]).astype(np.int64),
        )
        return embed_items(loaded[0], padded, known=np.zeros(len(padded.item), dtype=bool))

    return embed


def item_lookup(schema: FeatureSchema) -> Callable[[str], int | None]:
    """What rules resolve an item id with: its index in ``schema``'s catalogue, None when it has none."""

    def lookup(item_id: str) -> int | None:
        return int(schema.item_index([item_id])[0]) or None

    return lookup


def _item_attributes(
    recall: RecallBundle,
    schema: FeatureSchema,
    items: ItemFeatures,
    statistics: ItemStatistics,
    vectors: np.ndarray,
    popularity: np.ndarray,
) -> ItemAttributes:
    catalogue = recall.catalogue
    years = np.zeros(schema.num_items, dtype=np.int64)
    years[schema.item_index(catalogue["item_id"].to_numpy())] = catalogue["year"].fillna(0).to_numpy()
    years[0] = 0

    return ItemAttributes(
        item_lookup=item_lookup(schema),
        genres=items.genres,
        genre_names=schema.genres,
        years=years,
        quality=statistics.rating_on_scale(np.arange(schema.num_items)),
        vectors=vectors,
        popularity=popularity,
    )


def served_versions(store: ArtifactStore, ranking_version: str | None = None) -> dict[str, str]:
    """The versions to serve together: the current ranker (or ``ranking_version``), the recall it was
    trained on, and the newest index built from that recall. A ranker is never served beside another
    recall's candidates: a newly published recall waits until a ranker trained on it is published too."""
    ranking = RankingBundle(
        store.require(RANKING) if ranking_version is None else store.get(RANKING, ranking_version)
    )
    recall_version = ranking.trained_from
    if recall_version is None or recall_version not in store.versions(RECALL):
        raise ArtifactError(
            f"ranking {ranking.version} was trained on recall {recall_version}, which is not in the store; "
            "retrain ranking"
        )
    current_index = store.current(INDEX)
    if current_index is not None and IndexBundle(current_index).built_from == recall_version:
        index_version = current_index.version
    else:
        built = [
            version
            for version in reversed(store.versions(INDEX))
            if IndexBundle(store.get(INDEX, version)).built_from == recall_version
        ]
        if not built:
            raise ArtifactError(
                f"no index is built from recall {recall_version}, which ranking {ranking.version} was "
                "trained on; run `cascade rebuild-index`"
            )
        index_version = built[0]
    return {RECALL: recall_version, INDEX: index_version, RANKING: ranking.version}


def _check_against_config(
    config: AppConfig, recall: RecallBundle, index: IndexBundle, ranking: RankingBundle
) -> None:
    """Refuse a recall and a ranker trained on different history lengths; otherwise serving follows the
    artifacts, and a live config that says otherwise is logged for an operator's look."""
    if recall.history_length != ranking.history_length:
        raise ArtifactError(
            f"recall {recall.version} was trained on {recall.history_length} behaviours per user, ranking "
            f"{ranking.version} on {ranking.history_length}; retrain ranking"
        )
    if config.features.history_length != ranking.history_length:
        logger.warning(
            "features.history_length is %d, but the models were trained on %d behaviours per user; serving "
            "uses %d",
            config.features.history_length,
            ranking.history_length,
            ranking.history_length,
        )
    wanted = min(config.recall.num_candidates, index.items)
    if index.tuned_for is not None and index.tuned_for != wanted:
        logger.warning(
            "recall.num_candidates is %d, but index %s had its search knob tuned for %d candidates, where "
            "its recall against exact search was measured; serving asks it for %d (`cascade rebuild-index` "
            "tunes it for the configured count)",
            config.recall.num_candidates,
            index.version,
            index.tuned_for,
            index.tuned_for,
        )
    if ranking.trained_from != recall.version:
        raise ArtifactError(
            f"ranking {ranking.version} was trained on candidates of recall {ranking.trained_from}, not of "
            f"recall {recall.version}; a ranker is only served with its own recall"
        )
