"""Training task for the two-tower model: sampled softmax over in-batch plus uniformly sampled negatives.

Every other positive in a batch is a negative for a row, and so are ``uniform_negatives`` items drawn
uniformly from the catalogue (mixed negative sampling, Yang et al. 2020), which reach the long tail that
batches rarely contain. Each negative's logit is corrected by the log of how often it is sampled
(``logq_correction``, Yi et al. 2019): popular items fill batches, uniform draws do not. A negative equal to
the row's own positive is masked out.

Each example's user side sees only the interactions before it (its behaviour history), exactly as serving
sees a user's history before the items it is about to recommend.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cascade.core.distributed import (
    batch_starts,
    buffers_from_first_process,
    distributed_context,
    from_first_process,
)
from cascade.core.engines import LOCAL, OfflineEngine, PartitionedJob, PartResult, aligned_parts
from cascade.core.optim import adam_with_lazy_tables
from cascade.core.schema import FeatureSchema, ItemFeatures, UserFeatures
from cascade.recall.config import RecallConfig
from cascade.recall.two_tower import TwoTowerModel, TwoTowerSpec

logger = logging.getLogger(__name__)


class InteractionSequences:
    """Interactions grouped per user in time order, to look up each one's preceding history.

    user_index, item_index, timestamp: aligned (N,) arrays. Ties in time are broken by item index so the
    order, and so every history, is deterministic.
    """

    def __init__(self, user_index: np.ndarray, item_index: np.ndarray, timestamp: np.ndarray):
        order = np.lexsort((item_index, timestamp, user_index))
        self.user = np.asarray(user_index, dtype=np.int64)[order]
        self.item = np.asarray(item_index, dtype=np.int64)[order]
        starts = np.r_[0, np.flatnonzero(np.diff(self.user)) + 1]
        lengths = np.diff(np.r_[starts, len(self.user)])
        self.position = np.arange(len(self.user)) - np.repeat(starts, lengths)  # index within the user

    def __len__(self) -> int:
        return len(self.item)

    def _walk_back(self, rows: np.ndarray, length: int, first_step: np.ndarray) -> np.ndarray:
        """Items ``first_step``, ``first_step`` + 1, ... positions back from each of ``rows`` within its
        user, 0 past the user's first interaction -> (R, length)."""
        back = first_step[:, None] + np.arange(length)[None, :]
        valid = back <= self.position[rows][:, None]
        return np.where(valid, self.item[np.maximum(rows[:, None] - back, 0)], 0)

    def history_before(self, rows: np.ndarray, length: int, gap: np.ndarray | None = None) -> np.ndarray:
        """The ``length`` interactions before each of ``rows`` (positions in this order), most recent
        first, 0-padded -> (R, length). ``gap`` (R,) skips that many more interactions back first, so the
        history ends ``gap`` interactions before the row's own."""
        skip = np.zeros(len(rows), dtype=np.int64) if gap is None else np.minimum(gap, self.position[rows])
        return self._walk_back(rows, length, 1 + skip)

    def latest_history(self, user_rows: np.ndarray, length: int) -> np.ndarray:
        """Each user's latest ``length`` items, most recent first, 0-padded; users absent here get an empty
        history -> (U, length)."""
        user_rows = np.asarray(user_rows, dtype=np.int64)
        if len(self.user) == 0:
            return np.zeros((len(user_rows), length), dtype=np.int64)
        last = np.searchsorted(self.user, user_rows, side="right") - 1
        present = (last >= 0) & (self.user[np.maximum(last, 0)] == user_rows)
        history = self._walk_back(np.maximum(last, 0), length, np.zeros(len(user_rows), dtype=np.int64))
        return np.where(present[:, None], history, 0)


@dataclass
class TwoTowerTrainingResult:
    model: TwoTowerModel
    final_loss: float
    steps: int
    epochs: int  # epochs run
    best_epoch: int  # 1-based epoch whose weights the model holds
    validation: list[float] = field(default_factory=list)  # the validation metric after each epoch


def user_tensors(users: UserFeatures, rows: np.ndarray, history: np.ndarray) -> tuple[torch.Tensor, ...]:
    """Encoded user rows (R,) and their histories (R, L) -> the user tower's inputs."""
    columns = [getattr(users, f)[rows] for f in ("user", "gender", "age", "occupation", "zip")]
    return (*(torch.from_numpy(np.ascontiguousarray(c)) for c in columns), torch.from_numpy(history))


def item_tensors(items: ItemFeatures, idx: np.ndarray, hide_id: np.ndarray | None = None):
    """Item-table rows (R,) -> the item tower's inputs; ``hide_id`` (R,) bool embeds those from content."""
    item = items.item[idx]
    if hide_id is not None:
        item = np.where(hide_id, 0, item)
    return (
        torch.from_numpy(np.ascontiguousarray(item)),
        torch.from_numpy(items.genres[idx]),
        torch.from_numpy(items.title[idx]),
        torch.from_numpy(np.ascontiguousarray(items.year[idx])),
    )


def train_two_tower(
    config: RecallConfig,
    schema: FeatureSchema,
    users: UserFeatures,
    items: ItemFeatures,
    sequences: InteractionSequences,
    seed: int,
    history_length: int,
    validate: Callable[[TwoTowerModel], float] | None = None,
    epochs: int | None = None,
    progress: bool = True,
    initial: TwoTowerModel | None = None,
    sparse_ids: bool = True,
) -> TwoTowerTrainingResult:
    """Fit on ``sequences``. With ``validate`` (model -> metric, higher is better) training stops once the
    metric has not improved for ``early_stopping_patience`` epochs and the best epoch's weights are kept;
    ``epochs`` overrides the configured maximum. ``initial``: a model of the same spec to start from (its
    weights are copied, not changed), rather than a fresh initialisation. ``sparse_ids``: see
    ``TwoTowerModel``."""
    if len(sequences) == 0:
        raise ValueError("no training interactions")
    max_epochs = epochs or config.epochs
    world, rank = distributed_context()
    # every process walks the same permutation, each taking its own batches of it; the draws within a
    # batch (history gaps, negatives, id dropout) are each process's own
    order_rng = np.random.default_rng(seed)
    rng = np.random.default_rng([seed, rank])
    torch.manual_seed(seed)
    spec = TwoTowerSpec.from_schema(
        schema,
        history_length=history_length,
        embedding_dim=config.embedding_dim,
        hidden_dim=config.hidden_dim,
        history_pooling=config.history_pooling,
        history_heads=config.history_heads,
    )
    model = TwoTowerModel(spec, sparse_ids=sparse_ids)
    if initial is not None:
        if initial.spec != spec:
            raise ValueError("the initial two-tower model was built for another schema or config")
        model.load_state_dict(initial.state_dict())
    # lazy Adam for the id tables: a step costs the batch, not the catalogue
    optimizers = adam_with_lazy_tables(model, config.learning_rate, config.weight_decay)
    # one process: the model itself; several: DistributedDataParallel, which averages the gradients
    # across processes in backward (sparse ones too, on gloo) so every copy takes the same step
    step_model: nn.Module = model if world == 1 else nn.parallel.DistributedDataParallel(model)
    catalogue = schema.num_items - 1
    counts = np.bincount(sequences.item, minlength=schema.num_items).astype(np.float64)
    batch_size = min(config.batch_size, len(sequences))
    # log of each negative's expected count in one step's sample
    log_q_batch = torch.from_numpy(np.log(np.maximum(counts, 1.0) / len(sequences) * batch_size)).float()
    num_uniform = min(config.uniform_negatives, catalogue)
    full_softmax = catalogue <= config.full_softmax_max_items
    every_item = np.arange(1, schema.num_items)
    log_q_uniform = float(np.log(max(num_uniform, 1) / catalogue))

    steps, running = 0, float("nan")
    best_metric, best_epoch, best_state, stale = -np.inf, 0, None, 0
    scores: list[float] = []
    bar = tqdm(range(1, max_epochs + 1), desc="two-tower", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        order = order_rng.permutation(len(sequences))
        if config.max_steps_per_epoch is not None:
            order = order[: config.max_steps_per_epoch * batch_size * world]
        for start in batch_starts(len(order), batch_size, world, rank):
            rows = order[start : start + batch_size]
            u_idx, i_idx = sequences.user[rows], sequences.item[rows]
            gap = rng.integers(0, config.history_gap_max + 1, size=len(rows))
            history = sequences.history_before(rows, history_length, gap)
            user_in = list(user_tensors(users, u_idx, history))
            hide_user = torch.from_numpy(rng.random(len(rows)) < config.user_id_dropout)
            user_in[0] = torch.where(hide_user, torch.zeros_like(user_in[0]), user_in[0])
            if full_softmax:
                # every catalogue item is a negative: no sampling, so no sampling bias to correct
                hide_item = rng.random(catalogue) < config.item_id_dropout
                u, v = step_model(
                    tuple(user_in), item_tensors(items, every_item, hide_item)
                )  # (B, D), (N, D)
                logits = u @ v.T / config.temperature  # (B, N)
                loss = F.cross_entropy(logits, torch.from_numpy(i_idx - 1))
            else:
                negatives = rng.integers(1, schema.num_items, size=num_uniform)
                all_items = np.concatenate([i_idx, negatives])
                # each distinct item goes through the item tower once: batches repeat popular items
                distinct, column_of = np.unique(all_items, return_inverse=True)
                hide_item = rng.random(len(distinct)) < config.item_id_dropout
                u, v_distinct = step_model(
                    tuple(user_in), item_tensors(items, distinct, hide_item)
                )  # (B, D), (Q, D)
                v = v_distinct.index_select(0, torch.from_numpy(column_of.reshape(-1)))  # (B + M, D)
                logits = u @ v.T / config.temperature  # (B, B + M)
                target = torch.from_numpy(i_idx)
                columns = torch.from_numpy(all_items)
                if config.logq_correction:
                    correction = torch.cat([log_q_batch[target], torch.full((num_uniform,), log_q_uniform)])
                    logits = logits - config.logq_correction * correction.unsqueeze(0)
                own = torch.arange(len(rows))
                same_item = target.unsqueeze(1) == columns.unsqueeze(0)
                same_item[own, own] = False
                logits = logits.masked_fill(same_item, float("-inf"))
                loss = F.cross_entropy(logits, own)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            steps += 1
            running = loss.item() if steps == 1 else 0.98 * running + 0.02 * loss.item()
            if steps % 10 == 0:
                bar.set_postfix(loss=f"{running:.4f}", refresh=False)
        buffers_from_first_process(model, world)
        postfix = {"loss": f"{running:.4f}"}
        if validate is not None:
            model.eval()
            # the copies are equal; one validates and tells the others, so all stop at the same epoch
            metric = from_first_process(float(validate(model)) if rank == 0 else 0.0, world)
            scores.append(metric)
            postfix["val"] = f"{metric:.4f}"
            logger.info("two-tower epoch %d: loss %.4f, validation %.4f", epoch, running, metric)
            if metric > best_metric:
                best_metric, best_epoch, stale = metric, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        bar.set_postfix(postfix)
        if validate is not None and stale >= config.early_stopping_patience:
            logger.info("early stop after epoch %d; best epoch %d (%.4f)", epoch, best_epoch, best_metric)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = epoch
    model.eval()
    logger.info("two-tower trained: %d steps, running loss %.4f", steps, running)
    return TwoTowerTrainingResult(model, float(running), steps, epoch, best_epoch, scores)


def embed_items(
    model: TwoTowerModel,
    items: ItemFeatures,
    known: np.ndarray | None = None,
    batch_size: int = 8192,
    engine: OfflineEngine = LOCAL,
) -> np.ndarray:
    """Embeddings of catalogue rows 1..N (row 0 is padding) -> (N, D) float32.

    ``known`` (num_items,) bool marks items the model has seen interactions of; the others are embedded
    from content alone, since their id embeddings were never trained. ``engine`` embeds runs of whole
    batches where it runs jobs: every batch is the same rows whatever the parts, so the same numbers."""
    parts = [
        pd.DataFrame({"row": np.arange(rows.start, rows.stop)})
        for rows in aligned_parts(len(items.item), engine.partitions, batch_size, first=1)
    ]
    out = [
        part["embeddings"] for part in engine.map_parts(_EmbedItems(model, items, known, batch_size), parts)
    ]
    return _stacked(out, model.spec.embedding_dim)


def embed_users(
    model: TwoTowerModel,
    users: UserFeatures,
    rows: np.ndarray,
    history: np.ndarray,
    batch_size: int = 8192,
    engine: OfflineEngine = LOCAL,
) -> np.ndarray:
    """Embeddings of user-table rows (R,) with their histories (R, L) -> (R, D) float32; ``engine`` as for
    ``embed_items``."""
    parts = [
        pd.DataFrame({"position": np.arange(positions.start, positions.stop)})
        for positions in aligned_parts(len(rows), engine.partitions, batch_size)
    ]
    job = _EmbedUsers(model, users, rows, history, batch_size)
    return _stacked([part["embeddings"] for part in engine.map_parts(job, parts)], model.spec.embedding_dim)


def _stacked(parts: list[np.ndarray], dim: int) -> np.ndarray:
    """The parts' embeddings one after the other -> (R, D) float32. One part is returned as it is: at 10M
    items a copy would be 2.5 GB more at the moment training's memory peaks."""
    if not parts:
        return np.zeros((0, dim), dtype=np.float32)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts)


class _EmbedItems(PartitionedJob):
    """A run of catalogue rows (whole batches from row 1) -> their embeddings (R, D) float32."""

    name = "item embeddings"

    def __init__(self, model: TwoTowerModel, items: ItemFeatures, known: np.ndarray | None, batch_size: int):
        self.model, self.items, self.known, self.batch_size = model, items, known, batch_size

    @torch.inference_mode()
    def run_part(self, part: dict[str, np.ndarray]) -> PartResult:
        rows = part["row"]
        # filled in place: a list of batches and its concatenation would hold the part twice
        out = np.empty((len(rows), self.model.spec.embedding_dim), dtype=np.float32)
        for start in range(0, len(rows), self.batch_size):
            idx = rows[start : start + self.batch_size]
            hide = None if self.known is None else ~self.known[idx]
            items = item_tensors(self.items, idx, hide)
            out[start : start + len(idx)] = self.model.item_tower(*items).numpy()
        return {"embeddings": out}


class _EmbedUsers(PartitionedJob):
    """A run of positions into ``rows`` and ``history`` (whole batches from 0) -> embeddings (R, D)."""

    name = "user embeddings"

    def __init__(
        self,
        model: TwoTowerModel,
        users: UserFeatures,
        rows: np.ndarray,
        history: np.ndarray,
        batch_size: int,
    ):
        self.model, self.users, self.rows, self.history = model, users, rows, history
        self.batch_size = batch_size

    @torch.inference_mode()
    def run_part(self, part: dict[str, np.ndarray]) -> PartResult:
        positions = part["position"]
        out = np.empty((len(positions), self.model.spec.embedding_dim), dtype=np.float32)
        for start in range(0, len(positions), self.batch_size):
            at = positions[start : start + self.batch_size]
            users = user_tensors(self.users, self.rows[at], self.history[at])
            out[start : start + len(at)] = self.model.user_tower(*users).numpy()
        return {"embeddings": out}
