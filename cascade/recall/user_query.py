"""The user tower's forward pass for one user at a time, in numpy: the query vector a served request sends
to the ANN index.

The function is the tower's (``UserTower.forward``); only the runtime differs. A served
request embeds one user in ~25 tensor operations, each a trip through torch's dispatcher, whose code and
tables the request's other stages have pushed out of the CPU's caches by the time the next request gets
here, so inside the pipeline those calls cost several times what they cost back to back; a dozen numpy
calls over views of the same weights cost a third as much (benchmarks/README.md has the figures).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cascade.recall.two_tower import UserTower


class UserQueryEncoder:
    """``UserTower`` inference for one user: scalar field indices and a (H,) history -> (D,) unit vector.

    The embedding tables are views of the tower's weights (no copy of the item table); the layers' small
    derived weights (transposes, the position projection) are computed once, so a tower whose weights
    change afterwards needs a new encoder. Build one with ``UserQueryEncoder.from_tower``."""

    @classmethod
    def from_tower(cls, tower: UserTower) -> UserQueryEncoder:
        """The serving form of a trained user tower."""
        return cls(tower)

    def __init__(self, tower: UserTower):
        """Use ``from_tower``."""
        with torch.no_grad():
            self._fields = tuple(
                table.weight.detach().numpy()
                for table in (tower.user, tower.gender, tower.age, tower.occupation, tower.zip)
            )
            self._items = tower.item_embedding.weight.detach().numpy()
            first, last = tower.mlp[0], tower.mlp[2]
            self._first_weight = first.weight.detach().numpy().T.copy()  # (F, hidden)
            self._first_bias = first.bias.detach().numpy().copy()
            self._last_weight = last.weight.detach().numpy().T.copy()  # (hidden, D)
            self._last_bias = last.bias.detach().numpy().copy()
            pooling = tower.pooling
            if pooling is None:
                self._positions = self._project = self._score = None
                self.max_history = None
            else:
                # W p_j + b for each recency position j: the projection's share that no item changes, (L, A)
                positions = F.linear(pooling.position.weight, pooling.project.weight, pooling.project.bias)
                self._positions = positions.numpy()
                self._project = pooling.project.weight.detach().numpy().T.copy()  # (D, A)
                self._score = pooling.score.weight.detach().numpy().T.copy()  # (A, heads)
                self.max_history = pooling.position.num_embeddings

    def __call__(
        self, user: int, gender: int, age: int, occupation: int, zip_prefix: int, history: np.ndarray
    ) -> np.ndarray:
        """Field indices as the schema encodes them; history (H,) int item indices, most recent first, 0 =
        padding (a slot keeps its recency position whatever precedes it, as in the tower) -> (D,) float32."""
        if self.max_history is not None and len(history) > self.max_history:
            raise ValueError(f"history: at most {self.max_history} items, got {len(history)}")
        slots = np.flatnonzero(history > 0)
        if len(slots) == 0:  # the tower pools an empty history to zeros
            heads = 1 if self._score is None else self._score.shape[1]
            pooled = np.zeros(heads * self._items.shape[1], dtype=np.float32)
        else:
            embedded = self._items[history[slots]]  # (H', D)
            if self._score is None:
                pooled = embedded.mean(axis=0)
            else:
                hidden = np.tanh(embedded @ self._project + self._positions[slots])  # (H', A)
                logits = hidden @ self._score  # (H', heads)
                weights = np.exp(logits - logits.max(axis=0))
                pooled = ((weights / weights.sum(axis=0)).T @ embedded).reshape(-1)  # (heads * D,)
        users, genders, ages, occupations, zips = self._fields
        x = np.concatenate(
            [users[user], genders[gender], ages[age], occupations[occupation], zips[zip_prefix], pooled]
        )
        hidden = np.maximum(x @ self._first_weight + self._first_bias, 0.0)
        out = hidden @ self._last_weight + self._last_bias
        return out / max(float(np.linalg.norm(out)), 1e-12)  # F.normalize's eps
