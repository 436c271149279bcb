"""The neural rankers: one training loop (binary cross-entropy, Adam, the epoch with the best validation
GAUC kept) around a torch module, DIN's or Wide&Deep's."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from cascade.core.distributed import (
    batch_starts,
    buffers_from_first_process,
    distributed_context,
    from_first_process,
)
from cascade.core.metrics import gauc
from cascade.core.optim import adam_with_lazy_tables
from cascade.core.schema import FeatureSchema, ItemFeatures
from cascade.ranking.config import DINConfig, RankingConfig, WideDeepConfig
from cascade.ranking.din import DIN, DINSpec
from cascade.ranking.din_serving import DINServing
from cascade.ranking.features import RankingBatch
from cascade.ranking.ranker import (
    RANKER_META,
    Ranker,
    RequestScorer,
    Validation,
    cardinalities,
    check_features,
    dense_features_of,
)
from cascade.ranking.wide_deep import WideDeep, WideDeepSpec


class TorchRanker(Ranker):
    """A torch module mapping RankingBatch tensors to logits, trained with binary cross-entropy; the epoch
    with the best validation GAUC is kept."""

    WEIGHTS: str
    model: DIN | WideDeep

    def __init__(self, model: DIN | WideDeep, config: RankingConfig):
        if not isinstance(config.model, (DINConfig, WideDeepConfig)) or config.type != self.type:
            raise ValueError(f"config: a {self.type} ranker needs ranking.model.type = {self.type!r}")
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
        world, rank = distributed_context()
        rng = np.random.default_rng(seed)  # the epoch order, shared by every process
        # dropout's draws are each process's own
        torch.manual_seed(seed if world == 1 else seed + rank)
        cfg = self.config.model
        # lazy Adam for the id tables: a step costs the batch, not the catalogue
        optimizers = adam_with_lazy_tables(self.model, cfg.learning_rate, cfg.weight_decay)
        # several processes: DistributedDataParallel averages the gradients in backward, so every copy
        # takes the same step on a global batch of world * batch_size examples
        step_model: nn.Module = self.model if world == 1 else nn.parallel.DistributedDataParallel(self.model)
        targets = torch.from_numpy(np.asarray(labels, dtype=np.float32))
        running, steps = float("nan"), 0
        best: tuple[float, int, dict] | None = None
        history: list[float] = []
        bar = tqdm(range(cfg.epochs), desc=self.type, unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            self.model.train()
            order = rng.permutation(len(batch))
            for start in batch_starts(len(order), cfg.batch_size, world, rank):
                rows = order[start : start + cfg.batch_size]
                logits = step_model(batch.take(rows).tensors())
                loss = F.binary_cross_entropy_with_logits(logits, targets[rows])
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for optimizer in optimizers:
                    optimizer.step()
                steps += 1
                running = loss.item() if steps == 1 else 0.95 * running + 0.05 * loss.item()
            buffers_from_first_process(self.model, world)
            self.model.eval()
            if validation is not None:
                val_batch, val_labels = validation
                # the copies are equal; one scores and tells the others, so all keep the same epoch
                score = from_first_process(
                    gauc(val_labels, self.score(val_batch), val_batch.request) if rank == 0 else 0.0, world
                )
                history.append(score)
                if best is None or score > best[0]:
                    best = (score, epoch + 1, copy.deepcopy(self.model.state_dict()))
                bar.set_postfix(loss=f"{running:.4f}", val_gauc=f"{score:.4f}")
            else:
                bar.set_postfix(loss=f"{running:.4f}")
        metrics = {"train_logloss": float(running), "steps": float(steps), "epochs": float(cfg.epochs)}
        if world > 1:
            metrics["training_processes"] = float(world)
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
        check_features(meta, folder)
        return meta, load_file(str(folder / cls.WEIGHTS)), RankingConfig.model_validate(meta["config"])


class WideDeepRanker(TorchRanker):
    type = "wide_deep"
    WEIGHTS = "wide_deep.safetensors"

    @classmethod
    def create(cls, config: RankingConfig, schema: FeatureSchema, items: ItemFeatures) -> WideDeepRanker:
        model: WideDeepConfig = config.model
        spec = WideDeepSpec(
            cardinalities=cardinalities(schema),
            crosses=tuple(tuple(c) for c in model.crosses),
            embedding_dim=model.embedding_dim,
            hidden_dims=tuple(model.hidden_dims),
            dropout=model.dropout,
            hash_buckets=model.hash_buckets,
            dense_width=len(dense_features_of(config)),
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
        model: DINConfig = config.model
        return DINSpec(
            cardinalities=cardinalities,
            item_dim=model.item_dim,
            genre_dim=model.genre_dim,
            user_dim=model.user_dim,
            attention_hidden=tuple(model.attention_hidden),
            attention_activation=model.attention_activation,
            hidden_dims=tuple(model.hidden_dims),
            activation=model.activation,
            dropout=model.dropout,
            max_genres=max_genres,
            dense_width=len(dense_features_of(config)),
        )

    def serving_form(self, precision: str = "float32") -> RequestScorer:
        """``DINServing``: one request's logits with the weights folded once, in ``precision``."""
        logits = DINServing.build(self.model, precision)
        return lambda batch: torch.sigmoid(torch.from_numpy(logits(batch))).numpy()

    @classmethod
    def create(cls, config: RankingConfig, schema: FeatureSchema, items: ItemFeatures) -> DINRanker:
        model = DIN(cls.spec_of(config, cardinalities(schema), items.genres.shape[1]))
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
