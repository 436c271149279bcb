"""The Ranker interface (fit / score / save / load) and its registry, keyed by ``RankingConfig.type``."""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from cascade.config import RankingConfig
from cascade.errors import ArtifactError
from cascade.features import FeatureSchema
from ranking.features import DENSE_FEATURES, FEATURES_VERSION, RankingBatch
from ranking.wide_deep import CATEGORICAL_FIELDS, WideDeep, WideDeepSpec

logger = logging.getLogger(__name__)

RANKER_META = "ranker.json"


class Ranker(ABC):
    type: str

    @abstractmethod
    def fit(
        self, batch: RankingBatch, labels: np.ndarray, seed: int, progress: bool = True
    ) -> dict[str, float]:
        """Train on labelled pairs; returns training metrics."""

    @abstractmethod
    def score(self, batch: RankingBatch) -> np.ndarray:
        """-> scores (B,) float32, higher is better."""

    @abstractmethod
    def save(self, folder: Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, folder: Path) -> Ranker: ...


class WideDeepRanker(Ranker):
    type = "wide_deep"
    WEIGHTS = "wide_deep.safetensors"

    def __init__(self, model: WideDeep, config: RankingConfig):
        self.model = model
        self.config = config

    @classmethod
    def create(cls, config: RankingConfig, schema: FeatureSchema) -> WideDeepRanker:
        spec = WideDeepSpec(
            cardinalities={name: schema.cardinality(name) for name in CATEGORICAL_FIELDS},
            crosses=tuple(tuple(c) for c in config.wide_crosses),
            embedding_dim=config.embedding_dim,
            hidden_dims=tuple(config.hidden_dims),
            dropout=config.dropout,
        )
        return cls(WideDeep(spec), config)

    def fit(
        self, batch: RankingBatch, labels: np.ndarray, seed: int, progress: bool = True
    ) -> dict[str, float]:
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.learning_rate)
        targets = torch.from_numpy(np.asarray(labels, dtype=np.float32))
        self.model.train()
        running, steps = float("nan"), 0
        bar = tqdm(
            range(self.config.epochs), desc="wide&deep", unit="epoch", disable=not progress, leave=False
        )
        for _ in bar:
            order = rng.permutation(len(batch))
            for start in range(0, len(order), self.config.batch_size):
                rows = order[start : start + self.config.batch_size]
                logits = self.model(batch.take(rows).tensors())
                loss = F.binary_cross_entropy_with_logits(logits, targets[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                running = loss.item() if steps == 1 else 0.95 * running + 0.05 * loss.item()
            bar.set_postfix(loss=f"{running:.4f}")
        self.model.eval()
        return {"train_logloss": float(running), "steps": float(steps)}

    @torch.inference_mode()
    def score(self, batch: RankingBatch) -> np.ndarray:
        return torch.sigmoid(self.model(batch.tensors())).numpy()

    def save(self, folder: Path) -> None:
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(folder / self.WEIGHTS))
        meta = {
            "type": self.type,
            "spec": asdict(self.model.spec),
            "dense_features": list(DENSE_FEATURES),
            "features_version": FEATURES_VERSION,
            "config": self.config.model_dump(mode="json"),
        }
        (folder / RANKER_META).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> WideDeepRanker:
        meta = json.loads((folder / RANKER_META).read_text())
        trained_on = (meta.get("dense_features"), meta.get("features_version"))
        if trained_on != (list(DENSE_FEATURES), FEATURES_VERSION):
            raise ArtifactError(
                f"ranker in {folder} was trained on features {trained_on}, this code builds "
                f"{(list(DENSE_FEATURES), FEATURES_VERSION)}; retrain with `cascade train ranking`"
            )
        raw = meta["spec"]
        spec = WideDeepSpec(
            cardinalities=raw["cardinalities"],
            crosses=tuple(tuple(c) for c in raw["crosses"]),
            embedding_dim=raw["embedding_dim"],
            hidden_dims=tuple(raw["hidden_dims"]),
            dropout=raw["dropout"],
        )
        model = WideDeep(spec)
        model.load_state_dict(load_file(str(folder / cls.WEIGHTS)))
        model.eval()
        return cls(model, RankingConfig.model_validate(meta["config"]))


RANKERS: dict[str, type[Ranker]] = {WideDeepRanker.type: WideDeepRanker}


def create_ranker(config: RankingConfig, schema: FeatureSchema) -> Ranker:
    if config.type == WideDeepRanker.type:
        return WideDeepRanker.create(config, schema)
    raise ValueError(f"unknown ranker type {config.type!r}")


def load_ranker(folder: Path) -> Ranker:
    meta_path = folder / RANKER_META
    if not meta_path.is_file():
        raise ArtifactError(f"{folder} holds no ranker")
    ranker_type = json.loads(meta_path.read_text())["type"]
    if ranker_type not in RANKERS:
        raise ArtifactError(f"ranker type {ranker_type!r} in {folder} is not supported by this code")
    return RANKERS[ranker_type].load(folder)
