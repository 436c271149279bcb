"""The Ranker interface (fit / score / save / load) and its registry, keyed by ``RankingConfig.type``."""

from __future__ import annotations

import copy
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path

import lightgbm as lgb
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from cascade.config import RankingConfig
from cascade.errors import ArtifactError
from cascade.features import FeatureSchema, ItemFeatures
from cascade.metrics import gauc
from ranking.din import DIN, DINSpec
from ranking.features import CHANNELS, DENSE_FEATURES, FEATURES_VERSION, RankingBatch
from ranking.wide_deep import WideDeep, WideDeepSpec

logger = logging.getLogger(__name__)

RANKER_META = "ranker.json"
Validation = tuple[RankingBatch, np.ndarray]


def _meta_matches(meta: dict, folder: Path) -> None:
    trained_on = (meta.get("dense_features"), meta.get("features_version"))
    if trained_on != (list(DENSE_FEATURES), FEATURES_VERSION):
        raise ArtifactError(
            f"ranker in {folder} was trained on features {trained_on}, this code builds "
            f"{(list(DENSE_FEATURES), FEATURES_VERSION)}; retrain with `cascade train ranking`"
        )


def _cardinalities(schema: FeatureSchema) -> dict[str, int]:
    names = ("user", "gender", "age", "occupation", "zip", "item", "genre", "year")
    return {name: schema.cardinality(name) for name in names} | {"channel": len(CHANNELS) + 1}


class Ranker(ABC):
    type: str

    @abstractmethod
    def fit(
        self,
        batch: RankingBatch,
        labels: np.ndarray,
        seed: int,
        progress: bool = True,
        validation: Validation | None = None,
    ) -> dict[str, float]:
        """Train on labelled candidates (labels (B,) 0/1); ``validation`` picks epochs / rounds.
        Returns training metrics."""

    @abstractmethod
    def score(self, batch: RankingBatch) -> np.ndarray:
        """-> (B,) float32 probabilities that each candidate is a positive; higher is better."""

    def set_inference_precision(self, precision: str) -> bool:
        """Use ``precision`` ("float32" or "bfloat16") where this ranker has a reduced-precision serving
        path; returns whether it has one (only float32 exists otherwise)."""
        return precision == "float32"

    @abstractmethod
    def save(self, folder: Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, folder: Path) -> Ranker: ...

    def _meta(self, config: RankingConfig, **extra) -> dict:
        return {
            "type": self.type,
            "dense_features": list(DENSE_FEATURES),
            "features_version": FEATURES_VERSION,
            "config": config.model_dump(mode="json"),
            **extra,
        }


class TorchRanker(Ranker):
    """A torch module mapping RankingBatch tensors to logits, trained with binary cross-entropy; the epoch
    with the best validation GAUC is kept."""

    WEIGHTS: str
    model: nn.Module

    def __init__(self, model: nn.Module, config: RankingConfig):
        self.model = model
        self.config = config

    def fit(
        self,
        batch: RankingBatch,
        labels: np.ndarray,
        seed: int,
        progress: bool = True,
        validation: Validation | None = None,
    ) -> dict[str, float]:
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        cfg = self.config
        optimizer = torch.optim.Adam(
            self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        targets = torch.from_numpy(np.asarray(labels, dtype=np.float32))
        running, steps = float("nan"), 0
        best: tuple[float, int, dict] | None = None
        history: list[float] = []
        bar = tqdm(range(cfg.epochs), desc=self.type, unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            self.model.train()
            order = rng.permutation(len(batch))
            for start in range(0, len(order), cfg.batch_size):
                rows = order[start : start + cfg.batch_size]
                logits = self.model(batch.take(rows).tensors())
                loss = F.binary_cross_entropy_with_logits(logits, targets[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                running = loss.item() if steps == 1 else 0.95 * running + 0.05 * loss.item()
            self.model.eval()
            if validation is not None:
                val_batch, val_labels = validation
                score = gauc(val_labels, self.score(val_batch), val_batch.request)
                history.append(score)
                if best is None or score > best[0]:
                    best = (score, epoch + 1, copy.deepcopy(self.model.state_dict()))
                bar.set_postfix(loss=f"{running:.4f}", val_gauc=f"{score:.4f}")
            else:
                bar.set_postfix(loss=f"{running:.4f}")
        metrics = {"train_logloss": float(running), "steps": float(steps), "epochs": float(cfg.epochs)}
        if best is not None:
            self.model.load_state_dict(best[2])
            metrics |= {"best_epoch": float(best[1]), "validation_gauc": best[0]}
        self.model.eval()
        return metrics

    @torch.inference_mode()
    def score(self, batch: RankingBatch, chunk: int = 65536) -> np.ndarray:
        if len(batch) <= chunk:
            return torch.sigmoid(self.model(batch.tensors())).numpy()
        parts = [
            self.score(batch.take(np.arange(s, min(s + chunk, len(batch)))))
            for s in range(0, len(batch), chunk)
        ]
        return np.concatenate(parts)

    def save(self, folder: Path) -> None:
        state = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(folder / self.WEIGHTS))
        meta = self._meta(self.config, spec=asdict(self.model.spec))
        (folder / RANKER_META).write_text(json.dumps(meta, indent=2))

    @classmethod
    def _load_parts(cls, folder: Path) -> tuple[dict, dict[str, torch.Tensor], RankingConfig]:
        meta = json.loads((folder / RANKER_META).read_text())
        _meta_matches(meta, folder)
        return meta, load_file(str(folder / cls.WEIGHTS)), RankingConfig.model_validate(meta["config"])


class WideDeepRanker(TorchRanker):
    type = "wide_deep"
    WEIGHTS = "wide_deep.safetensors"

    @classmethod
    def create(cls, config: RankingConfig, schema: FeatureSchema, items: ItemFeatures) -> WideDeepRanker:
        spec = WideDeepSpec(
            cardinalities=_cardinalities(schema),
            crosses=tuple(tuple(c) for c in config.wide_crosses),
            embedding_dim=config.embedding_dim,
            hidden_dims=tuple(config.hidden_dims),
            dropout=config.dropout,
            hash_buckets=config.wide_hash_buckets,
        )
        return cls(WideDeep(spec), config)

    @classmethod
    def load(cls, folder: Path) -> WideDeepRanker:
        meta, state, config = cls._load_parts(folder)
        raw = meta["spec"]
        raw["crosses"] = tuple(tuple(c) for c in raw["crosses"])
        raw["hidden_dims"] = tuple(raw["hidden_dims"])
        model = WideDeep(WideDeepSpec(**raw))
        model.load_state_dict(state)
        model.eval()
        return cls(model, config)


class DINRanker(TorchRanker):
    type = "din"
    WEIGHTS = "din.safetensors"

    @staticmethod
    def spec_of(config: RankingConfig, cardinalities: dict[str, int], max_genres: int) -> DINSpec:
        return DINSpec(
            cardinalities=cardinalities,
            item_dim=config.din_item_dim,
            genre_dim=config.din_genre_dim,
            user_dim=config.din_user_dim,
            attention_hidden=tuple(config.din_attention_hidden),
            attention_activation=config.din_attention_activation,
            hidden_dims=tuple(config.din_hidden_dims),
            activation=config.din_activation,
            dropout=config.dropout,
            max_genres=max_genres,
        )

    def set_inference_precision(self, precision: str) -> bool:
        self.model.set_precision(precision)
        return True

    @classmethod
    def create(cls, config: RankingConfig, schema: FeatureSchema, items: ItemFeatures) -> DINRanker:
        model = DIN(cls.spec_of(config, _cardinalities(schema), items.genres.shape[1]))
        model.set_item_genres(torch.from_numpy(items.genres.astype(np.int64)))
        return cls(model, config)

    @classmethod
    def load(cls, folder: Path) -> DINRanker:
        meta, state, config = cls._load_parts(folder)
        raw = meta["spec"]
        for key in ("attention_hidden", "hidden_dims"):
            raw[key] = tuple(raw[key])
        model = DIN(DINSpec(**raw))
        model.load_state_dict(state)
        model.eval()
        return cls(model, config)


# the engineered features LightGBM sees: every dense feature, the channel and the release year bucket
GBDT_FEATURES = (*DENSE_FEATURES, "channel", "year")


class LightGBMRanker(Ranker):
    """LambdaMART (LightGBM's lambdarank objective) over the engineered features, one query group per
    request; rounds chosen by early stopping on validation NDCG@10. Its scores are mapped to probabilities
    by a logistic (Platt) fit on the validation candidates, which keeps their order."""

    type = "lightgbm"
    MODEL_FILE = "lightgbm.txt"

    def __init__(self, config: RankingConfig, booster: lgb.Booster | None = None, platt=(1.0, 0.0)):
        self.config = config
        self.booster = booster
        self.platt = platt

    @classmethod
    def create(cls, config: RankingConfig, schema: FeatureSchema, items: ItemFeatures) -> LightGBMRanker:
        return cls(config)

    @staticmethod
    def features(batch: RankingBatch) -> np.ndarray:
        """(B, len(GBDT_FEATURES)) float32."""
        return np.column_stack([batch.dense, batch.channel, batch.year]).astype(np.float32)

    @staticmethod
    def _grouped(batch: RankingBatch, labels: np.ndarray) -> lgb.Dataset:
        order = np.argsort(batch.request, kind="stable")
        sizes = np.bincount(batch.request)
        return lgb.Dataset(
            LightGBMRanker.features(batch)[order],
            np.asarray(labels)[order].astype(np.int32),
            group=sizes[sizes > 0],
            feature_name=list(GBDT_FEATURES),
            categorical_feature=["channel"],
            free_raw_data=False,
        )

    def fit(
        self,
        batch: RankingBatch,
        labels: np.ndarray,
        seed: int,
        progress: bool = True,
        validation: Validation | None = None,
    ) -> dict[str, float]:
        cfg = self.config
        params = {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [10],
            "learning_rate": cfg.lgb_learning_rate,
            "num_leaves": cfg.lgb_num_leaves,
            "min_data_in_leaf": cfg.lgb_min_data_in_leaf,
            "feature_fraction": 0.8,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "seed": seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": cfg.threads,
            "verbosity": -1,
        }
        train = self._grouped(batch, labels)
        callbacks = []
        valid_sets = []
        if validation is not None:
            valid_sets = [self._grouped(*validation).set_reference(train)]
            callbacks.append(lgb.early_stopping(cfg.lgb_early_stopping_rounds, verbose=False))
        if progress:
            callbacks.append(lgb.log_evaluation(period=50))
        self.booster = lgb.train(
            params, train, num_boost_round=cfg.lgb_rounds, valid_sets=valid_sets, callbacks=callbacks
        )
        metrics = {"rounds": float(self.booster.best_iteration or self.booster.current_iteration())}
        if validation is not None:
            val_batch, val_labels = validation
            raw = self._raw(val_batch)
            self.platt = _platt(raw, np.asarray(val_labels, dtype=np.float64))
            metrics["validation_ndcg@10"] = float(self.booster.best_score["valid_0"]["ndcg@10"])
            metrics["validation_gauc"] = gauc(val_labels, raw, val_batch.request)
        return metrics

    def _raw(self, batch: RankingBatch) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("the LightGBM ranker is not trained")
        return self.booster.predict(
            self.features(batch), num_iteration=self.booster.best_iteration or None, num_threads=1
        )

    def score(self, batch: RankingBatch) -> np.ndarray:
        a, b = self.platt
        return (1.0 / (1.0 + np.exp(-(a * self._raw(batch) + b)))).astype(np.float32)

    def save(self, folder: Path) -> None:
        if self.booster is None:
            raise RuntimeError("the LightGBM ranker is not trained")
        (folder / self.MODEL_FILE).write_text(
            self.booster.model_to_string(num_iteration=self.booster.best_iteration or None)
        )
        meta = self._meta(self.config, features=list(GBDT_FEATURES), platt=list(self.platt))
        (folder / RANKER_META).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> LightGBMRanker:
        meta = json.loads((folder / RANKER_META).read_text())
        _meta_matches(meta, folder)
        if meta.get("features") != list(GBDT_FEATURES):
            raise ArtifactError(f"LightGBM ranker in {folder} was trained on {meta.get('features')}")
        booster = lgb.Booster(model_str=(folder / cls.MODEL_FILE).read_text())
        return cls(RankingConfig.model_validate(meta["config"]), booster, tuple(meta["platt"]))


def _platt(scores: np.ndarray, labels: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """Logistic regression of labels on one score by Newton's method -> (slope, intercept)."""
    a, b = 1.0, 0.0
    if labels.min() == labels.max():
        return a, b
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a * scores + b)))
        w = np.maximum(p * (1 - p), 1e-9)
        grad = np.array([((p - labels) * scores).sum(), (p - labels).sum()])
        hess = np.array([[(w * scores * scores).sum(), (w * scores).sum()], [(w * scores).sum(), w.sum()]])
        step = np.linalg.solve(hess + 1e-9 * np.eye(2), grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-9:
            break
    return float(a), float(b)


RANKERS: dict[str, type[Ranker]] = {
    WideDeepRanker.type: WideDeepRanker,
    DINRanker.type: DINRanker,
    LightGBMRanker.type: LightGBMRanker,
}


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
