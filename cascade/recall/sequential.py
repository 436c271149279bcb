"""A sequential recall baseline: SASRec (Kang & McAuley, 2018), self-attention over a user's item sequence.

Causal self-attention blocks over the last ``max_length`` items (item + position embeddings); the output at
each position scores every item by a dot product with the shared item embeddings, trained with a full
softmax on the next item (Petrov & Macdonald, 2023, find the full softmax beats SASRec's original
one-negative loss). A user's recommendations are the scores at their latest position. The full softmax is
a (B, L, N) product per step, so this baseline is for catalogues of at most ``SASREC_MAX_ITEMS`` items.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from cascade.core.sparse import interaction_matrix
from cascade.recall.baselines import top_unseen

logger = logging.getLogger(__name__)

SASREC_MAX_ITEMS = 100_000


@dataclass(frozen=True)
class SASRecParams:
    dim: int = 64
    blocks: int = 2
    heads: int = 2
    dropout: float = 0.2
    max_length: int = 50
    epochs: int = 60  # most epochs; early stopping on validation picks fewer
    patience: int = 3
    batch_size: int = 32
    learning_rate: float = 2e-3


class SASRecModel(nn.Module):
    """items (B, L) int64, oldest first, 0 = padding on the left -> hidden states (B, L, D)."""

    def __init__(self, num_items: int, params: SASRecParams):
        super().__init__()
        self.items = nn.Embedding(num_items, params.dim, padding_idx=0)
        self.positions = nn.Embedding(params.max_length, params.dim)
        layer = nn.TransformerEncoderLayer(
            params.dim,
            params.heads,
            dim_feedforward=params.dim,
            dropout=params.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, params.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(params.dim)
        self.dropout = nn.Dropout(params.dropout)
        self.heads = params.heads

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        length = items.shape[1]
        x = self.items(items) * self.items.embedding_dim**0.5 + self.positions.weight[:length]
        # causal, and padding is never attended to, except that every position sees itself: a padding
        # row with nothing to attend to would give NaN, and NaN times a zero weight spreads to every row
        later = torch.ones(length, length, dtype=torch.bool).triu(diagonal=1)
        blocked = (later.unsqueeze(0) | (items == 0).unsqueeze(1)) & ~torch.eye(length, dtype=torch.bool)
        mask = torch.zeros(blocked.shape).masked_fill(blocked, float("-inf"))
        hidden = self.encoder(self.dropout(x), mask=mask.repeat_interleave(self.heads, dim=0))
        return self.norm(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., D) -> scores of every item (..., N)."""
        return hidden @ self.items.weight.t()


def _windows(user: np.ndarray, item: np.ndarray, length: int) -> np.ndarray:
    """Each user's time-ordered items cut into windows of ``length + 1`` from the latest backwards,
    left-padded with 0 -> (W, length + 1): inputs are [:, :-1], next-item targets [:, 1:]."""
    out = []
    starts = np.r_[0, np.flatnonzero(np.diff(user)) + 1, len(user)]
    for lo, hi in itertools.pairwise(starts):
        sequence = item[lo:hi]
        for end in range(len(sequence), 1, -length):
            window = sequence[max(0, end - length - 1) : end]
            out.append(np.pad(window, (length + 1 - len(window), 0)))
    return np.array(out, dtype=np.int64).reshape(-1, length + 1)


class SASRecRecommender:
    """Fits SASRec on time-ordered interactions and recommends from each user's latest items."""

    def __init__(self, params: SASRecParams, seed: int):
        self.params = params
        self.seed = seed
        self.model: SASRecModel | None = None
        self.best_epoch = 0
        self._matrix: sp.csr_matrix | None = None
        self._latest: dict[int, np.ndarray] = {}

    def fit(
        self,
        user: np.ndarray,
        item: np.ndarray,
        num_users: int,
        num_items: int,
        validate: Callable[[SASRecRecommender], float] | None = None,
        epochs: int | None = None,
    ) -> SASRecRecommender:
        """user, item: (N,) aligned, sorted by user then time. With ``validate`` (higher is better) the
        epoch it likes best is kept; ``epochs`` overrides the most epochs."""
        if num_items > SASREC_MAX_ITEMS:
            raise ValueError(
                f"SASRec's full softmax scores every item at every position; {num_items} items is above its "
                f"limit of {SASREC_MAX_ITEMS}"
            )
        p = self.params
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self._matrix = interaction_matrix(user, item, (num_users, num_items))
        starts = np.r_[0, np.flatnonzero(np.diff(user)) + 1]
        ends = np.r_[starts[1:], len(user)]
        self._latest = {int(user[s]): item[max(s, e - p.max_length) : e] for s, e in zip(starts, ends)}
        windows = torch.from_numpy(_windows(user, item, p.max_length))
        self.model = SASRecModel(num_items, p)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=p.learning_rate)
        best = (-np.inf, 0, None)
        for epoch in range(1, (epochs or p.epochs) + 1):
            self.model.train()
            for rows in np.array_split(rng.permutation(len(windows)), max(1, len(windows) // p.batch_size)):
                batch = windows[torch.from_numpy(rows)]
                inputs, targets = batch[:, :-1], batch[:, 1:]
                hidden = self.model(inputs)
                keep = targets > 0
                loss = F.cross_entropy(self.model.logits(hidden[keep]), targets[keep])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if validate is None:
                continue
            self.model.eval()
            score = validate(self)
            logger.info("SASRec epoch %d: validation %.4f", epoch, score)
            if score > best[0]:
                best = (score, epoch, copy.deepcopy(self.model.state_dict()))
            elif epoch - best[1] >= p.patience:
                break
        if best[2] is not None:
            self.model.load_state_dict(best[2])
            self.best_epoch = best[1]
        else:
            self.best_epoch = epochs or p.epochs
        self.model.eval()
        return self

    @torch.inference_mode()
    def recommend(self, user_rows: np.ndarray, k: int, batch: int = 512) -> np.ndarray:
        """Top-k unseen item indices per user row -> (U, k); 0 pads where fewer are available."""
        if self.model is None or self._matrix is None:
            raise RuntimeError("fit before recommend")
        length = self.params.max_length
        out = []
        for begin in range(0, len(user_rows), batch):
            rows = np.asarray(user_rows[begin : begin + batch], dtype=np.int64)
            sequences = np.zeros((len(rows), length), dtype=np.int64)
            for i, row in enumerate(rows.tolist()):
                latest = self._latest.get(row)
                if latest is not None and len(latest):
                    sequences[i, -len(latest) :] = latest
            hidden = self.model(torch.from_numpy(sequences))[:, -1]
            out.append(top_unseen(self.model.logits(hidden).numpy(), self._matrix[rows], k))
        return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)
