"""A dataset loaded, split and encoded: what every offline stage starts from."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from cascade.config import AppConfig
from cascade.core.artifacts import ArtifactRef, ArtifactStore
from cascade.core.schema import FeatureSchema, ItemFeatures, UserFeatures
from cascade.data.dataset import Dataset
from cascade.data.split import TemporalSplit, temporal_split
from cascade.recall.training import InteractionSequences

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """A dataset with its split and encoded tables."""

    dataset: Dataset
    data_fingerprint: str
    split: TemporalSplit
    schema: FeatureSchema
    users: UserFeatures  # row i = user index i
    items: ItemFeatures  # row i = item index i

    def inner_split(self, holdout_fraction: float) -> TemporalSplit:
        """The nested split: the training part split again, the same way."""
        return temporal_split(self.split.train, holdout_fraction)

    def sequences(self, interactions: pd.DataFrame) -> InteractionSequences:
        """``interactions`` as (user index, item index, time) sequences."""
        return InteractionSequences(
            self.schema.user_index(interactions["user_id"].to_numpy()),
            self.schema.item_index(interactions["item_id"].to_numpy()),
            interactions["timestamp"].to_numpy(),
        )

    def item_counts(self, interactions: pd.DataFrame) -> np.ndarray:
        """(num_items,) float64 interactions per item index."""
        idx = self.schema.item_index(interactions["item_id"].to_numpy())
        return np.bincount(idx[idx > 0], minlength=self.schema.num_items).astype(np.float64)


def prepare(config: AppConfig) -> Prepared:
    path = config.data.path
    return prepare_dataset(
        config, Dataset.load(path, pseudonyms=config.pseudonyms()), Dataset.fingerprint_of(path)
    )


def prepare_dataset(config: AppConfig, dataset: Dataset, data_fp: str) -> Prepared:
    """``dataset`` (fingerprint ``data_fp``) split and encoded as ``config`` says."""
    split = temporal_split(dataset.interactions, config.data.holdout_fraction)
    schema = FeatureSchema.fit(
        dataset.users,
        dataset.items,
        config.features.max_genres,
        config.features.title_length,
        config.features.zip_prefix_length,
        ratings=dataset.interactions["rating"].to_numpy(),
        pseudonyms=config.pseudonyms(),
    )
    return Prepared(
        dataset, data_fp, split, schema, schema.user_table(dataset.users), schema.item_table(dataset.items)
    )


def reuse_current(store: ArtifactStore, kind: str, wanted: str, force: bool) -> ArtifactRef | None:
    """The current ``kind`` artifact when it was built with fingerprint ``wanted`` (and not ``force``)."""
    current = store.current(kind)
    if current is not None and current.fingerprint == wanted and not force:
        logger.info("%s %s is up to date (fingerprint %s); reusing it", kind, current.version, wanted)
        return current
    return None


def check_trained_on(dataset_fingerprint: str | None, config: AppConfig) -> None:
    """Refuse to evaluate a recall model trained on another dataset than the configured one."""
    data_fp = Dataset.fingerprint_of(config.data.path)
    if dataset_fingerprint != data_fp:
        raise RuntimeError(
            f"the current recall model was trained on dataset {dataset_fingerprint}, not on "
            f"{config.data.dataset} ({data_fp}); retrain before evaluating"
        )


@contextlib.contextmanager
def compute_threads(threads: int) -> Iterator[None]:
    """Cap BLAS/OpenMP pools and torch's intra-op threads for offline training (torch's restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)
