"""The recall and index artifacts' files: written and read here, and nowhere else.

A recall artifact holds what `cascade train recall` fixed for every later stage::

    schema.json                 the feature schema (id -> index tables, vocabularies)
    catalogue.parquet           the items as loaded (id, title, genres, year), the index's rows in order
    popularity.npy              (num_items,) training interactions per item index
    two_tower.{safetensors,json}, cooccurrence.npz, segment_popularity.npz
                                the model and channels over the whole training part: what serving uses
    inner_two_tower.{safetensors,json}, inner/cooccurrence.npz
                                the same fitted on the nested split's training part only: what the ranker's
                                training candidates come from, so its labels are never seen by recall
    query_sample.npz            real user-tower inputs that tune and validate the index

An index artifact is an ``ItemIndex`` (``cascade.recall.index``) built from one recall version, its parent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from cascade.core.artifacts import ArtifactBundle, ArtifactRef
from cascade.core.errors import ArtifactError
from cascade.core.privacy import Pseudonymiser
from cascade.core.schema import USER_FIELDS, FeatureSchema, ItemFeatures, UserFeatures
from cascade.recall.channels import CooccurrenceRules, SegmentPopularity
from cascade.recall.index import ItemIndex
from cascade.recall.item_item import ItemItemChannel
from cascade.recall.two_tower import TwoTowerModel

RECALL = "recall"
INDEX = "index"

SCHEMA_FILE = "schema.json"
CATALOGUE_FILE = "catalogue.parquet"
POPULARITY_FILE = "popularity.npy"
QUERY_SAMPLE_FILE = "query_sample.npz"
# the nested split's model files carry this prefix beside the final model's; its rules have a folder
INNER_MODEL_PREFIX = "inner_"
INNER_RULES_FOLDER = "inner"


@dataclass(frozen=True)
class QuerySample:
    """Real user-tower inputs: users (U rows of encoded fields) and their histories (U, L)."""

    users: UserFeatures
    history: np.ndarray


@dataclass(frozen=True)
class RecallParts:
    """Everything `cascade train recall` publishes; see the module's docstring for each file."""

    schema: FeatureSchema
    catalogue: pd.DataFrame
    popularity: np.ndarray
    model: TwoTowerModel
    rules: CooccurrenceRules
    segments: SegmentPopularity
    inner_model: TwoTowerModel
    inner_rules: CooccurrenceRules
    query_sample: QuerySample
    item_item: ItemItemChannel | None = None  # None above recall.item_item_max_items
    inner_item_item: ItemItemChannel | None = None

    def write(self, folder: Path) -> None:
        """Write every file into ``folder`` (the store's temp folder of a new version)."""
        self.schema.save(folder / SCHEMA_FILE)
        self.catalogue.to_parquet(folder / CATALOGUE_FILE, index=False)
        np.save(folder / POPULARITY_FILE, self.popularity, allow_pickle=False)
        self.model.save(folder)
        self.rules.save(folder)
        self.segments.save(folder)
        self.inner_model.save(folder, prefix=INNER_MODEL_PREFIX)
        inner = folder / INNER_RULES_FOLDER
        inner.mkdir()
        self.inner_rules.save(inner)
        if self.item_item is not None:
            self.item_item.save(folder)
        if self.inner_item_item is not None:
            self.inner_item_item.save(inner)
        sample = self.query_sample
        with open(folder / QUERY_SAMPLE_FILE, "wb") as fh:
            np.savez(
                fh, history=sample.history, **{name: getattr(sample.users, name) for name in USER_FIELDS}
            )


class RecallBundle(ArtifactBundle):
    """Reads a published recall artifact; each part is loaded on first use."""

    KIND = RECALL

    def __init__(self, ref: ArtifactRef, pseudonyms: Pseudonymiser | None = None):
        """``pseudonyms``: the key the schema's users were saved under, to look users up (``schema``)."""
        super().__init__(ref)
        self.pseudonyms = pseudonyms

    @property
    def dataset_fingerprint(self) -> str | None:
        return self.ref.manifest.get("dataset", {}).get("fingerprint")

    @cached_property
    def schema(self) -> FeatureSchema:
        return FeatureSchema.load(self.ref.file(SCHEMA_FILE), self.pseudonyms)

    @cached_property
    def catalogue(self) -> pd.DataFrame:
        return pd.read_parquet(self.ref.file(CATALOGUE_FILE))

    @cached_property
    def items(self) -> ItemFeatures:
        """The catalogue encoded by the schema, row i = item index i."""
        return self.schema.item_table(self.catalogue)

    def titles(self) -> np.ndarray:
        """(num_items,) object, row i = item index i's title ("" for padding)."""
        titles = np.full(self.schema.num_items, "", dtype=object)
        titles[self.schema.item_index(self.catalogue["item_id"].to_numpy())] = self.catalogue[
            "title"
        ].to_numpy()
        return titles

    def popularity(self) -> np.ndarray:
        """(num_items,) training interaction counts per item index."""
        return np.load(self.ref.file(POPULARITY_FILE), allow_pickle=False)

    def two_tower(self) -> TwoTowerModel:
        return TwoTowerModel.load(self.ref.path)

    def cooccurrence(self) -> CooccurrenceRules:
        return CooccurrenceRules.load(self.ref.path)

    def segment_popularity(self) -> SegmentPopularity:
        return SegmentPopularity.load(self.ref.path)

    def item_item(self) -> ItemItemChannel | None:
        """The EASE channel; None when the catalogue was too large for it (or the artifact predates it)."""
        return ItemItemChannel.load(self.ref.path)

    def inner_item_item(self) -> ItemItemChannel | None:
        """The EASE channel fitted on the nested split's training part only."""
        return ItemItemChannel.load(self.ref.path / INNER_RULES_FOLDER)

    def inner_two_tower(self) -> TwoTowerModel:
        """The two-tower model fitted on the nested split's training part only."""
        return TwoTowerModel.load(self.ref.path, prefix=INNER_MODEL_PREFIX)

    def inner_cooccurrence(self) -> CooccurrenceRules:
        """The co-occurrence rules mined from the nested split's training part only."""
        return CooccurrenceRules.load(self.ref.path / INNER_RULES_FOLDER)

    def query_sample(self) -> QuerySample:
        with np.load(self.ref.file(QUERY_SAMPLE_FILE), allow_pickle=False) as raw:
            return QuerySample(UserFeatures(**{name: raw[name] for name in USER_FIELDS}), raw["history"])


class IndexBundle(ArtifactBundle):
    """Reads a published index artifact: the index, the recall version it was built from and the candidate
    count its search knob was tuned for."""

    KIND = INDEX

    @property
    def built_from(self) -> str | None:
        """The recall version whose item tower embedded the catalogue."""
        return self.parent(RECALL)

    @property
    def items(self) -> int:
        """Items the index holds."""
        return int(self.ref.manifest["index"]["items"])

    @property
    def tuned_for(self) -> int | None:
        """k of the recall@k that nprobe / efSearch were tuned to (the two-tower quota then)."""
        tuning: Mapping = self.ref.manifest.get("index", {}).get("tuning", {})
        return tuning.get("k")

    def check_built_from(self, recall: RecallBundle) -> None:
        if self.built_from != recall.version:
            raise ArtifactError(
                f"index {self.version} was built from recall {self.built_from}, but the current recall is "
                f"{recall.version}; run `cascade rebuild-index`"
            )

    def index(self) -> ItemIndex:
        return ItemIndex.load(self.ref.path)
