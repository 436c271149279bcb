"""Two-tower retrieval model: a user tower and an item tower meeting in a dot product.

Both towers end in L2 normalisation, so the dot product is a cosine similarity and an inner-product FAISS
index serves the model exactly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from cascade.features import FeatureSchema


def masked_mean(embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean of ``embeddings`` (B, L, E) over positions where ``ids`` (B, L) is not padding (0) -> (B, E)."""
    mask = (ids > 0).unsqueeze(-1).to(embeddings.dtype)
    return (embeddings * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


@dataclass(frozen=True)
class TwoTowerSpec:
    """Constructor arguments, saved beside the weights so a model can be rebuilt without its config."""

    num_users: int
    num_genders: int
    num_ages: int
    num_occupations: int
    num_items: int
    num_genres: int
    embedding_dim: int
    hidden_dim: int
    field_dim: int = 16

    @classmethod
    def from_schema(cls, schema: FeatureSchema, embedding_dim: int, hidden_dim: int) -> TwoTowerSpec:
        return cls(
            num_users=schema.num_users,
            num_genders=schema.num_genders,
            num_ages=schema.num_ages,
            num_occupations=schema.num_occupations,
            num_items=schema.num_items,
            num_genres=schema.num_genres,
            embedding_dim=embedding_dim,
            hidden_dim=hidden_dim,
        )


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class UserTower(nn.Module):
    """user, gender, age, occupation: each (B,) int64 -> (B, D) unit vectors.

    User index 0 is the "unknown user" row: training hides some users' ids behind it, so a new user is
    embedded from demographics alone.
    """

    def __init__(self, spec: TwoTowerSpec):
        super().__init__()
        self.user = nn.Embedding(spec.num_users, spec.embedding_dim)
        self.gender = nn.Embedding(spec.num_genders, spec.field_dim)
        self.age = nn.Embedding(spec.num_ages, spec.field_dim)
        self.occupation = nn.Embedding(spec.num_occupations, spec.field_dim)
        self.mlp = _mlp(spec.embedding_dim + 3 * spec.field_dim, spec.hidden_dim, spec.embedding_dim)

    def forward(
        self, user: torch.Tensor, gender: torch.Tensor, age: torch.Tensor, occupation: torch.Tensor
    ) -> torch.Tensor:
        x = torch.cat(
            [self.user(user), self.gender(gender), self.age(age), self.occupation(occupation)], dim=-1
        )
        return F.normalize(self.mlp(x), dim=-1)


class ItemTower(nn.Module):
    """item (B,) int64 and genres (B, G) int64 (0 = padding) -> (B, D) unit vectors."""

    def __init__(self, spec: TwoTowerSpec):
        super().__init__()
        self.item = nn.Embedding(spec.num_items, spec.embedding_dim)
        self.genre = nn.Embedding(spec.num_genres, spec.field_dim, padding_idx=0)
        self.mlp = _mlp(spec.embedding_dim + spec.field_dim, spec.hidden_dim, spec.embedding_dim)

    def forward(self, item: torch.Tensor, genres: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.item(item), masked_mean(self.genre(genres), genres)], dim=-1)
        return F.normalize(self.mlp(x), dim=-1)


class TwoTowerModel(nn.Module):
    WEIGHTS = "two_tower.safetensors"
    SPEC = "two_tower.json"

    def __init__(self, spec: TwoTowerSpec):
        super().__init__()
        self.spec = spec
        self.user_tower = UserTower(spec)
        self.item_tower = ItemTower(spec)

    def save(self, folder: Path) -> None:
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / self.WEIGHTS))
        (folder / self.SPEC).write_text(json.dumps(asdict(self.spec)))

    @classmethod
    def load(cls, folder: Path) -> TwoTowerModel:
        spec = TwoTowerSpec(**json.loads((folder / cls.SPEC).read_text()))
        model = cls(spec)
        model.load_state_dict(load_file(str(folder / cls.WEIGHTS)))
        model.eval()
        return model
