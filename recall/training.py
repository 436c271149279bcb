"""Training task for the two-tower model: sampled softmax over in-batch negatives.

Every other positive in a batch is a negative for a row. Because batches over-represent popular items,
``logq_correction`` subtracts log of each item's sampling probability from its logit (Yi et al., 2019).
Rows whose in-batch "negative" is the row's own positive item are masked out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cascade.config import RecallConfig
from cascade.features import FeatureSchema, ItemFeatures, UserFeatures
from recall.two_tower import TwoTowerModel, TwoTowerSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TwoTowerTrainingResult:
    model: TwoTowerModel
    final_loss: float
    steps: int


def _user_batch(users: UserFeatures, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(getattr(users, f)[idx]) for f in ("user", "gender", "age", "occupation"))


def _item_batch(items: ItemFeatures, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(items.item[idx]), torch.from_numpy(items.genres[idx])


def train_two_tower(
    config: RecallConfig,
    schema: FeatureSchema,
    users: UserFeatures,
    items: ItemFeatures,
    user_index: np.ndarray,
    item_index: np.ndarray,
    seed: int,
    progress: bool = True,
) -> TwoTowerTrainingResult:
    """Fit on interactions given as aligned arrays of user and item indices, each (N,)."""
    if len(user_index) == 0:
        raise ValueError("no training interactions")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = TwoTowerModel(TwoTowerSpec.from_schema(schema, config.embedding_dim, config.hidden_dim))
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    counts = np.bincount(item_index, minlength=schema.num_items).astype(np.float64)
    log_q = torch.from_numpy(np.log(np.maximum(counts, 1.0) / len(item_index)).astype(np.float32))

    steps, running = 0, float("nan")
    model.train()
    bar = tqdm(range(config.epochs), desc="two-tower", unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        order = rng.permutation(len(user_index))
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            if len(batch) < 2:
                continue
            u_idx, i_idx = user_index[batch], item_index[batch]
            user, gender, age, occupation = _user_batch(users, u_idx)
            hide = torch.from_numpy(rng.random(len(batch)) < config.user_id_dropout)
            user = torch.where(hide, torch.zeros_like(user), user)
            u = model.user_tower(user, gender, age, occupation)  # (B, D)
            item, genres = _item_batch(items, i_idx)
            v = model.item_tower(item, genres)  # (B, D)
            logits = u @ v.T / config.temperature  # (B, B)
            if config.logq_correction:
                logits = logits - log_q[item].unsqueeze(0)
            same_item = item.unsqueeze(0) == item.unsqueeze(1)
            logits = logits.masked_fill(same_item & ~torch.eye(len(batch), dtype=torch.bool), float("-inf"))
            loss = F.cross_entropy(logits, torch.arange(len(batch)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            running = loss.item() if steps == 1 else 0.95 * running + 0.05 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}")
    model.eval()
    logger.info("two-tower trained: %d steps, running loss %.4f", steps, running)
    return TwoTowerTrainingResult(model=model, final_loss=float(running), steps=steps)


@torch.inference_mode()
def embed_items(model: TwoTowerModel, items: ItemFeatures, batch_size: int = 65536) -> np.ndarray:
    """Embeddings of catalogue rows 1..N (row 0 is padding) -> (N, D) float32."""
    out = []
    for start in range(1, len(items.item), batch_size):
        idx = np.arange(start, min(start + batch_size, len(items.item)))
        out.append(model.item_tower(*_item_batch(items, idx)).numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


@torch.inference_mode()
def embed_users(model: TwoTowerModel, users: UserFeatures, rows: np.ndarray) -> np.ndarray:
    """Embeddings of user-table rows (N,) -> (N, D) float32."""
    return model.user_tower(*_user_batch(users, rows)).numpy()
