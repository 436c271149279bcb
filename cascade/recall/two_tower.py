"""Two-tower retrieval model: a user tower and an item tower meeting in a dot product.

Both towers end in L2 normalisation, so the dot product is a cosine similarity and an inner-product FAISS
index serves the model exactly. The towers share one item-id embedding table: the user tower pools it over
the user's recent items, the item tower looks its item up in it. Row 0 of that table is padding and stays
zero, which is also how an item with no interactions is embedded: from its content alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from cascade.core.schema import FeatureSchema
from cascade.recall.text_cnn import TitleCNN

HistoryPooling = Literal["mean", "attention"]


def masked_mean(embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean of ``embeddings`` (B, L, E) over positions where ``ids`` (B, L) is not padding (0) -> (B, E).

    A row with no real position gives zeros."""
    mask = (ids > 0).unsqueeze(-1).to(embeddings.dtype)
    return (embeddings * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


@dataclass(frozen=True)
class TwoTowerSpec:
    """Constructor arguments, saved beside the weights so a model can be rebuilt without its config."""

    num_users: int
    num_genders: int
    num_ages: int
    num_occupations: int
    num_zips: int
    num_items: int
    num_genres: int
    num_years: int
    num_title_words: int
    history_length: int
    embedding_dim: int
    hidden_dim: int
    history_pooling: HistoryPooling = "attention"
    history_heads: int = 1
    field_dim: int = 16
    title_word_dim: int = 32
    title_windows: tuple[int, ...] = (2, 3, 4, 5)
    title_filters: int = 16
    title_dim: int = 32

    @classmethod
    def from_schema(
        cls,
        schema: FeatureSchema,
        *,
        history_length: int,
        embedding_dim: int,
        hidden_dim: int,
        history_pooling: HistoryPooling,
        history_heads: int = 1,
    ) -> TwoTowerSpec:
        return cls(
            num_users=schema.num_users,
            num_genders=schema.num_genders,
            num_ages=schema.num_ages,
            num_occupations=schema.num_occupations,
            num_zips=schema.num_zip_prefixes,
            num_items=schema.num_items,
            num_genres=schema.num_genres,
            num_years=schema.num_years,
            num_title_words=schema.num_title_words,
            history_length=history_length,
            embedding_dim=embedding_dim,
            hidden_dim=hidden_dim,
            history_pooling=history_pooling,
            history_heads=history_heads,
        )


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class HistoryAttentionPooling(nn.Module):
    """Target-free attention over a behaviour sequence: weight_hj = softmax_j(v_h . tanh(W [e_j; p_j])) for
    each of ``heads`` heads.

    e_j: item embedding (B, L, D); p_j: an embedding of recency position j (0 = most recent); padding is
    masked out -> (B, heads * D), each head's weighted sum of the sequence side by side, so several heads
    can each follow one interest of a user with several. A user with no history gets zeros.
    """

    def __init__(self, dim: int, max_length: int, attention_dim: int = 32, heads: int = 1):
        super().__init__()
        self.heads = heads
        self.position = nn.Embedding(max_length, dim)
        self.project = nn.Linear(dim, attention_dim)
        self.score = nn.Linear(attention_dim, heads, bias=False)

    def forward(
        self, embeddings: torch.Tensor, ids: torch.Tensor, keys: torch.Tensor | None = None
    ) -> torch.Tensor:
        """embeddings (B, L, D), ids (B, L); keys: W e_j (B, L, A) when the caller has it (the user tower
        projects each distinct item of a batch once) -> (B, heads * D)."""
        # W [e_j; p_j] + b as W e_j + (W p_j + b): the positions' share is (L, A) whatever the batch
        positions = F.linear(self.position.weight[: ids.shape[1]], self.project.weight, self.project.bias)
        if keys is None:
            keys = torch.matmul(embeddings, self.project.weight.t())
        hidden = torch.tanh(keys + positions)  # (B, L, A)
        if self.heads == 1:
            logits = torch.matmul(hidden, self.score.weight[0]).masked_fill(ids <= 0, float("-inf"))
            weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # all-padding rows -> zeros, not NaN
            return torch.bmm(weights.unsqueeze(1), embeddings).squeeze(1)  # (B, D)
        logits = torch.matmul(hidden, self.score.weight.t())  # (B, L, H)
        logits = logits.masked_fill((ids <= 0).unsqueeze(-1), float("-inf"))
        weights = torch.softmax(logits, dim=1).nan_to_num(0.0)
        return torch.bmm(weights.transpose(1, 2), embeddings).flatten(1)  # (B, H * D)


class UserTower(nn.Module):
    """user, gender, age, occupation, zip: (B,) int64; history: (B, L) item indices, most recent first,
    0 = padding -> (B, D) unit vectors.

    User index 0 is the "unknown user" row: training hides some users' ids behind it, so a new user is
    embedded from demographics and whatever history they have.
    """

    def __init__(self, spec: TwoTowerSpec, item_embedding: nn.Embedding):
        super().__init__()
        self.user = nn.Embedding(spec.num_users, spec.embedding_dim, sparse=item_embedding.sparse)
        self.gender = nn.Embedding(spec.num_genders, spec.field_dim)
        self.age = nn.Embedding(spec.num_ages, spec.field_dim)
        self.occupation = nn.Embedding(spec.num_occupations, spec.field_dim)
        self.zip = nn.Embedding(spec.num_zips, spec.field_dim)
        self.item_embedding = item_embedding
        self.pooling: HistoryAttentionPooling | None = (
            HistoryAttentionPooling(spec.embedding_dim, spec.history_length, heads=spec.history_heads)
            if spec.history_pooling == "attention"
            else None
        )
        pooled = spec.embedding_dim * (spec.history_heads if self.pooling is not None else 1)
        self.mlp = _mlp(spec.embedding_dim + pooled + 4 * spec.field_dim, spec.hidden_dim, spec.embedding_dim)

    def pool_history(self, history: torch.Tensor) -> torch.Tensor:
        """history (B, L) -> (B, D), or (B, heads * D) with attention."""
        # the B * L slots of a batch hold far fewer distinct items: each is looked up and projected once,
        # then gathered per slot (index_select, whose backward sums in a fixed order)
        distinct, slot_row = torch.unique(history, return_inverse=True)  # (Q,), (B, L)
        rows = F.embedding(
            distinct, self.item_embedding.weight, padding_idx=0, sparse=self.item_embedding.sparse
        )  # (Q, D)
        slots = slot_row.reshape(-1)
        embedded = rows.index_select(0, slots).view(*history.shape, -1)  # (B, L, D)
        if self.pooling is None:
            return masked_mean(embedded, history)
        keys = torch.matmul(rows, self.pooling.project.weight.t()).index_select(0, slots)  # (B * L, A)
        return self.pooling(embedded, history, keys=keys.view(*history.shape, -1))

    def forward(
        self,
        user: torch.Tensor,
        gender: torch.Tensor,
        age: torch.Tensor,
        occupation: torch.Tensor,
        zip_prefix: torch.Tensor,
        history: torch.Tensor,
    ) -> torch.Tensor:
        fields = ((self.user, user), (self.gender, gender), (self.age, age))
        fields += ((self.occupation, occupation), (self.zip, zip_prefix))
        x = torch.cat([table(ids) for table, ids in fields] + [self.pool_history(history)], dim=-1)
        return F.normalize(self.mlp(x), dim=-1)


class ItemTower(nn.Module):
    """item (B,), genres (B, G), title (B, T), year (B,) int64 (0 = padding / unknown) -> (B, D) unit vectors.

    Item index 0 embeds an item from content alone (genres, title, year): that is how items with no
    interactions are served, and training hides some items' ids so the content path learns to carry them.
    """

    def __init__(self, spec: TwoTowerSpec, item_embedding: nn.Embedding):
        super().__init__()
        self.item_embedding = item_embedding
        self.genre = nn.Embedding(spec.num_genres, spec.field_dim, padding_idx=0)
        self.year = nn.Embedding(spec.num_years, spec.field_dim)
        self.title = TitleCNN(
            spec.num_title_words, spec.title_word_dim, spec.title_windows, spec.title_filters, spec.title_dim
        )
        in_dim = spec.embedding_dim + 2 * spec.field_dim + spec.title_dim
        self.mlp = _mlp(in_dim, spec.hidden_dim, spec.embedding_dim)

    def forward(
        self, item: torch.Tensor, genres: torch.Tensor, title: torch.Tensor, year: torch.Tensor
    ) -> torch.Tensor:
        x = torch.cat(
            [
                self.item_embedding(item),
                masked_mean(self.genre(genres), genres),
                self.year(year),
                self.title(title),
            ],
            dim=-1,
        )
        return F.normalize(self.mlp(x), dim=-1)


class TwoTowerModel(nn.Module):
    WEIGHTS = "two_tower.safetensors"
    SPEC = "two_tower.json"

    def __init__(self, spec: TwoTowerSpec, sparse_ids: bool = True):
        """sparse_ids: the id tables grow with the catalogue and the user base, so their gradients are
        sparse by default (only the rows a step touched) and a step costs the batch, not the tables (see
        ``sparse_parameters``); False gives dense ones, for backends without sparse all-reduce (NCCL)."""
        super().__init__()
        self.spec = spec
        self.item_embedding = nn.Embedding(
            spec.num_items, spec.embedding_dim, padding_idx=0, sparse=sparse_ids
        )
        self.user_tower = UserTower(spec, self.item_embedding)
        self.item_tower = ItemTower(spec, self.item_embedding)

    def forward(
        self, user_inputs: tuple[torch.Tensor, ...], item_inputs: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both towers in one call (what DistributedDataParallel wraps): user_inputs as ``UserTower``
        takes them (B rows), item_inputs as ``ItemTower`` (Q rows) -> (B, D), (Q, D) unit vectors."""
        return self.user_tower(*user_inputs), self.item_tower(*item_inputs)

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The parameters with sparse gradients: the id tables, (num_items, D) and (num_users, D), unless
        the model was built with dense ones."""
        if not self.item_embedding.sparse:
            return []
        return [self.item_embedding.weight, self.user_tower.user.weight]

    def save(self, folder: Path, prefix: str = "") -> None:
        # safetensors refuses shared storage; the item table is stored once and re-tied on load.
        state = {
            k: v.contiguous()
            for k, v in self.state_dict().items()
            if not k.startswith(("user_tower.item_embedding", "item_tower.item_embedding"))
        }
        save_file(state, str(folder / f"{prefix}{self.WEIGHTS}"))
        spec = asdict(self.spec)
        (folder / f"{prefix}{self.SPEC}").write_text(json.dumps(spec))

    @classmethod
    def load(cls, folder: Path, prefix: str = "") -> TwoTowerModel:
        raw = json.loads((folder / f"{prefix}{cls.SPEC}").read_text())
        raw["title_windows"] = tuple(raw["title_windows"])
        model = cls(TwoTowerSpec(**raw))
        missing, unexpected = model.load_state_dict(
            load_file(str(folder / f"{prefix}{cls.WEIGHTS}")), strict=False
        )
        tied = {"user_tower.item_embedding.weight", "item_tower.item_embedding.weight"}
        if unexpected or set(missing) - tied:
            raise ValueError(f"two-tower weights in {folder} do not match: {missing=} {unexpected=}")
        model.eval()
        return model
