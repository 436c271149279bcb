"""Wide&Deep (Cheng et al., 2016): a linear model over cross-product features plus an MLP over embeddings,
summed into one logit and trained jointly."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ranking.features import DENSE_FEATURES

CATEGORICAL_FIELDS = ("user", "gender", "age", "occupation", "item", "genre", "year")
_MULTI_VALUED = {"genre": "genres"}  # field name -> batch key holding a padded (B, G) list


@dataclass(frozen=True)
class WideDeepSpec:
    cardinalities: dict[str, int]
    crosses: tuple[tuple[str, str], ...]
    embedding_dim: int
    hidden_dims: tuple[int, ...]
    dropout: float


def _field_ids(batch: dict[str, torch.Tensor], field: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids (B, L) and mask (B, L); single-valued fields have L = 1 and are never masked."""
    if field in _MULTI_VALUED:
        ids = batch[_MULTI_VALUED[field]]
        return ids, ids > 0
    ids = batch[field].unsqueeze(1)
    return ids, torch.ones_like(ids, dtype=torch.bool)


class WideCross(nn.Module):
    """φ(x) = x_a · x_b for every value pair of two categorical fields, one learned weight per pair.

    Multi-valued fields (genres) contribute every (a, b) pair; padding positions contribute nothing.
    """

    def __init__(self, field_a: str, field_b: str, card_a: int, card_b: int):
        super().__init__()
        self.field_a, self.field_b, self.card_b = field_a, field_b, card_b
        self.weight = nn.Embedding(card_a * card_b, 1)
        nn.init.zeros_(self.weight.weight)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids_a, mask_a = _field_ids(batch, self.field_a)
        ids_b, mask_b = _field_ids(batch, self.field_b)
        pair_ids = ids_a.unsqueeze(2) * self.card_b + ids_b.unsqueeze(1)  # (B, La, Lb)
        pair_mask = (mask_a.unsqueeze(2) & mask_b.unsqueeze(1)).to(torch.float32)
        return (self.weight(pair_ids).squeeze(-1) * pair_mask).sum(dim=(1, 2))  # (B,)


class WideDeep(nn.Module):
    """batch of RankingBatch tensors -> logits (B,)."""

    def __init__(self, spec: WideDeepSpec):
        super().__init__()
        self.spec = spec
        for a, b in spec.crosses:
            for name in (a, b):
                if name not in CATEGORICAL_FIELDS:
                    raise ValueError(f"wide cross names unknown field {name!r}; known: {CATEGORICAL_FIELDS}")
        self.crosses = nn.ModuleList(
            WideCross(a, b, spec.cardinalities[a], spec.cardinalities[b]) for a, b in spec.crosses
        )
        self.wide_bias = nn.Parameter(torch.zeros(1))
        self.embeddings = nn.ModuleDict(
            {
                name: nn.Embedding(
                    spec.cardinalities[name], spec.embedding_dim, padding_idx=0 if name == "genre" else None
                )
                for name in CATEGORICAL_FIELDS
            }
        )
        layers: list[nn.Module] = []
        width = len(CATEGORICAL_FIELDS) * spec.embedding_dim + len(DENSE_FEATURES)
        for hidden in spec.hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        wide = self.wide_bias + sum((cross(batch) for cross in self.crosses), torch.zeros(1))
        parts = []
        for name in CATEGORICAL_FIELDS:
            ids, mask = _field_ids(batch, name)
            emb = self.embeddings[name](ids)  # (B, L, E)
            weight = mask.unsqueeze(-1).to(emb.dtype)
            parts.append((emb * weight).sum(1) / weight.sum(1).clamp(min=1.0))
        parts.append(batch["dense"])
        deep = self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)
        return wide + deep
