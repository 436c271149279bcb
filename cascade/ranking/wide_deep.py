"""Wide&Deep (Cheng et al., 2016): a linear model over cross-product features plus an MLP over embeddings,
summed into one logit and trained jointly."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

USER_FIELDS = ("user", "gender", "age", "occupation", "zip")
CANDIDATE_FIELDS = ("item", "genre", "year", "channel")
# feature name -> (batch key, per-request?, multi-valued?)
FIELDS = {
    "user": ("user", True, False),
    "gender": ("gender", True, False),
    "age": ("age", True, False),
    "occupation": ("occupation", True, False),
    "zip": ("zip", True, False),
    "history": ("history", True, True),
    "item": ("item", False, False),
    "genre": ("genres", False, True),
    "year": ("year", False, False),
    "channel": ("channel", False, False),
}
# the cardinality of a field that shares another's id space
CARDINALITY_OF = {"history": "item"}
# the fields whose ids grow with the catalogue and the user base: their tables, and the crosses of them,
# have sparse gradients (see ``WideDeep.sparse_parameters``)
ID_FIELDS = frozenset({"user", "item", "history"})


@dataclass(frozen=True)
class WideDeepSpec:
    cardinalities: dict[str, int]
    crosses: tuple[tuple[str, str], ...]
    embedding_dim: int
    hidden_dims: tuple[int, ...]
    dropout: float
    hash_buckets: int
    dense_width: int  # columns of RankingBatch.dense


def field_ids(batch: dict[str, torch.Tensor], field: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids (B, L) and mask (B, L) per candidate; single-valued fields have L = 1 and are never masked.
    Per-request fields are gathered to their candidates."""
    key, per_request, multi = FIELDS[field]
    ids = batch[key]
    if per_request:
        ids = ids[batch["request"]]
    if multi:
        return ids, ids > 0
    ids = ids.unsqueeze(1)
    return ids, torch.ones_like(ids, dtype=torch.bool)


class WideCross(nn.Module):
    """φ(x) = x_a · x_b for every value pair of two categorical fields, one learned weight per pair.

    Multi-valued fields (genres, the history) contribute every (a, b) pair; padding contributes nothing.
    A cross with more pairs than ``hash_buckets`` shares weights through a hash of the pair id.
    """

    def __init__(
        self, field_a: str, field_b: str, card_a: int, card_b: int, hash_buckets: int, sparse: bool = False
    ):
        super().__init__()
        self.field_a, self.field_b, self.card_b = field_a, field_b, card_b
        self.buckets = min(card_a * card_b, hash_buckets)
        self.hashed = card_a * card_b > hash_buckets
        self.weight = nn.Embedding(self.buckets, 1, sparse=sparse)
        nn.init.zeros_(self.weight.weight)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids_a, mask_a = field_ids(batch, self.field_a)
        ids_b, mask_b = field_ids(batch, self.field_b)
        pair_ids = ids_a.unsqueeze(2) * self.card_b + ids_b.unsqueeze(1)  # (B, La, Lb)
        if self.hashed:
            pair_ids = pair_ids % self.buckets
        pair_mask = (mask_a.unsqueeze(2) & mask_b.unsqueeze(1)).to(torch.float32)
        return (self.weight(pair_ids).squeeze(-1) * pair_mask).sum(dim=(1, 2))  # (B,)


def _pooled(embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """Masked mean of the embeddings of ids (N, L) with 0 as padding -> (N, E)."""
    weight = (ids > 0).unsqueeze(-1).to(torch.float32)
    return (embedding(ids) * weight).sum(1) / weight.sum(1).clamp(min=1.0)


class WideDeep(nn.Module):
    """RankingBatch tensors -> logits (B,). The deep part embeds the user side once per request (R rows)
    and gathers it to the candidates."""

    def __init__(self, spec: WideDeepSpec, sparse_ids: bool = True):
        """sparse_ids: the tables of the id fields (user, item, the history) and the crosses of them grow
        with the catalogue and the user base, so their gradients are sparse by default (see
        ``sparse_parameters``); False gives dense ones, for backends without sparse all-reduce (NCCL)."""
        super().__init__()
        self.spec = spec
        for a, b in spec.crosses:
            for name in (a, b):
                if name not in FIELDS:
                    raise ValueError(f"wide cross names unknown field {name!r}; known: {tuple(FIELDS)}")
        card = {name: spec.cardinalities[CARDINALITY_OF.get(name, name)] for name in FIELDS}
        self.crosses = nn.ModuleList(
            WideCross(a, b, card[a], card[b], spec.hash_buckets, sparse_ids and bool(ID_FIELDS & {a, b}))
            for a, b in spec.crosses
        )
        self.wide_bias = nn.Parameter(torch.zeros(1))
        dim = spec.embedding_dim
        self.embeddings = nn.ModuleDict(
            {
                name: nn.Embedding(
                    card[name],
                    dim,
                    padding_idx=0 if name == "genre" else None,
                    sparse=sparse_ids and name in ID_FIELDS,
                )
                for name in USER_FIELDS + CANDIDATE_FIELDS
            }
        )
        layers: list[nn.Module] = []
        # user fields, the pooled history, candidate fields, dense features
        width = (len(USER_FIELDS) + 1 + len(CANDIDATE_FIELDS)) * dim + spec.dense_width
        for hidden in spec.hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The parameters with sparse gradients: the user and item tables and the crosses of an id field,
        unless the model was built with dense ones."""
        tables = [self.embeddings[name] for name in self.embeddings if name in ID_FIELDS]
        tables += [cross.weight for cross in self.crosses]
        return [table.weight for table in tables if table.sparse]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        wide = self.wide_bias + sum((cross(batch) for cross in self.crosses), torch.zeros(1))
        per_request = [self.embeddings[name](batch[name]) for name in USER_FIELDS]
        per_request.append(_pooled(self.embeddings["item"], batch["history"]))
        user_side = torch.cat(per_request, dim=-1)[batch["request"]]  # (R, ·) computed once, -> (B, ·)
        candidate_side = [
            _pooled(self.embeddings["genre"], batch["genres"]),
            self.embeddings["item"](batch["item"]),
            self.embeddings["year"](batch["year"]),
            self.embeddings["channel"](batch["channel"]),
        ]
        deep = self.mlp(torch.cat([user_side, *candidate_side, batch["dense"]], dim=-1)).squeeze(-1)
        return wide + deep
