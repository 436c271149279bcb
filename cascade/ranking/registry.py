"""The rankers by type (``ranking.model.type``): create one to train, load a trained one."""

from __future__ import annotations

import json
from pathlib import Path

from cascade.core.errors import ArtifactError
from cascade.core.schema import FeatureSchema, ItemFeatures
from cascade.ranking.config import RankingConfig
from cascade.ranking.lightgbm_ranker import LightGBMRanker
from cascade.ranking.ranker import RANKER_META, Ranker
from cascade.ranking.torch_ranker import DINRanker, WideDeepRanker

RANKERS: dict[str, type[Ranker]] = {
    WideDeepRanker.type: WideDeepRanker,
    DINRanker.type: DINRanker,
    LightGBMRanker.type: LightGBMRanker,
}

# the rankers whose training runs data-parallel across processes (torch DistributedDataParallel);
# LightGBM parallelises with its own threads
DATA_PARALLEL_RANKERS: tuple[str, ...] = (WideDeepRanker.type, DINRanker.type)


def create_ranker(config: RankingConfig, schema: FeatureSchema, items: ItemFeatures) -> Ranker:
    if config.type not in RANKERS:
        raise ValueError(f"unknown ranker type {config.type!r}; known: {sorted(RANKERS)}")
    return RANKERS[config.type].create(config, schema, items)  # type: ignore[attr-defined]


def load_ranker(folder: Path) -> Ranker:
    meta_path = folder / RANKER_META
    if not meta_path.is_file():
        raise ArtifactError(f"{folder} holds no ranker")
    ranker_type = json.loads(meta_path.read_text())["type"]
    if ranker_type not in RANKERS:
        raise ArtifactError(f"ranker type {ranker_type!r} in {folder} is not supported by this code")
    return RANKERS[ranker_type].load(folder)
