"""DIN (Zhou et al., 2018, Deep Interest Network): each candidate attends over the user's behaviour sequence.

For candidate a and behaviour i, an activation unit scores [e_i, e_a, e_i - e_a, e_i * e_a] with a small
MLP; the weights are not softmax-normalised (they keep the intensity of the interest) and padding is masked.
The user's interest in a is sum_i w_i e_i, fed with the user and candidate features to an MLP.

Serving speed comes from splitting the activation unit's first layer W = [W1 W2 W3 W4]:
W [e_i, e_a, e_i - e_a, e_i * e_a] = (W1 + W3) e_i + (W2 - W3) e_a + W4 (e_i * e_a), so the e_i part is
computed once per behaviour, the e_a part once per candidate and only the last term per pair.
``reference_forward`` is the straightforward concatenation, kept to test and benchmark against.

This module is the model as it trains and scores offline batches. Its serving form, one request at a time
with weights folded ahead of time and an optional bfloat16 precision, is built from a trained model by
``DINServing.build`` (``cascade.ranking.din_serving``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

USER_FIELDS = ("user", "gender", "age", "occupation", "zip")


@dataclass(frozen=True)
class DINSpec:
    cardinalities: dict[str, int]
    item_dim: int
    genre_dim: int
    user_dim: int
    attention_hidden: tuple[int, ...]
    attention_activation: str
    hidden_dims: tuple[int, ...]
    activation: str
    dropout: float
    max_genres: int
    dense_width: int  # columns of RankingBatch.dense

    @property
    def behaviour_dim(self) -> int:
        """D: width of one behaviour / candidate vector [item embedding, mean genre embedding]."""
        return self.item_dim + self.genre_dim


class PReLU(nn.Module):
    """PReLU with one slope per unit along ``axis`` of its input (torch's own always uses axis 1)."""

    def __init__(self, width: int):
        super().__init__()
        self.slope = nn.Parameter(torch.full((width,), 0.25))

    @staticmethod
    def _shape(x: torch.Tensor, axis: int) -> list[int]:
        shape = [1] * x.dim()
        shape[axis] = -1
        return shape

    def forward(self, x: torch.Tensor, axis: int = -1) -> torch.Tensor:
        if axis % x.dim() == 1:  # torch's fused kernel: several times faster than a where()
            return F.prelu(x, self.slope)
        return torch.where(x > 0, x, x * self.slope.view(self._shape(x, axis)))


class Dice(PReLU):
    """Dice (DIN paper): a PReLU whose rectifier point follows the data, p(x) = sigmoid((x - E[x]) / sd[x]),
    f(x) = p(x) x + (1 - p(x)) alpha x; batch statistics in training, running ones in inference."""

    def __init__(self, width: int, momentum: float = 0.1, eps: float = 1e-8):
        super().__init__(width)
        nn.init.zeros_(self.slope)
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(width))
        self.register_buffer("running_var", torch.ones(width))

    def forward(self, x: torch.Tensor, axis: int = -1) -> torch.Tensor:
        shape = self._shape(x, axis)
        if self.training:
            dims = [d for d in range(x.dim()) if d != axis % x.dim()]
            mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        p = torch.sigmoid((x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps))
        return x * (p + (1 - p) * self.slope.view(shape))

    def inference_terms(self) -> torch.Tensor:
        """(4, width): -mean / sd, 1 / sd, alpha and 1 - alpha under the running statistics, with which
        f(x) = x (alpha + (1 - alpha) sigmoid(x / sd - mean / sd)): the serving form's four passes over x."""
        with torch.no_grad():
            scale = torch.rsqrt(self.running_var + self.eps)
            return torch.stack([-self.running_mean * scale, scale, self.slope, 1 - self.slope])


def activation(name: str, width: int) -> nn.Module:
    if name == "prelu":
        return PReLU(width)
    if name == "dice":
        return Dice(width)
    raise ValueError(f"unknown activation {name!r}; known: prelu, dice")


class ActivationUnit(nn.Module):
    """Scores behaviours against candidates: MLP([e_i, e_a, e_i - e_a, e_i * e_a]) -> w (B, L)."""

    def __init__(self, dim: int, hidden: tuple[int, ...], activation_name: str):
        super().__init__()
        if not hidden:
            raise ValueError("the activation unit needs at least one hidden layer")
        self.dim = dim
        widths = (4 * dim, *hidden)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.activations = nn.ModuleList(activation(activation_name, h) for h in hidden)
        self.out = nn.Linear(hidden[-1], 1)

    def reference(self, behaviours: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Straightforward form: behaviours (B, L, D) gathered per candidate, candidates (B, D) -> (B, L)."""
        query = candidates.unsqueeze(1).expand_as(behaviours)
        x = torch.cat([behaviours, query, behaviours - query, behaviours * query], dim=-1)  # (B, L, 4D)
        for linear, act in zip(self.linears, self.activations):
            x = act(linear(x))
        return self.out(x).squeeze(-1)

    def forward(
        self, behaviours: torch.Tensor, candidates: torch.Tensor, request: torch.Tensor
    ) -> torch.Tensor:
        """Split form: behaviours (R, L, D) once per request, candidates (B, D), request (B,) -> (B, L)."""
        first = self.linears[0]
        w1, w2, w3, w4 = first.weight.split(self.dim, dim=1)  # each (H, D)
        per_candidate = torch.addmm(first.bias, candidates, (w2 - w3).t())  # (B, H)
        per_behaviour = torch.matmul(behaviours, (w1 + w3).t())  # (R, L, H)
        gathered = behaviours.index_select(0, request)  # (B, L, D)
        pairs = torch.matmul(gathered * candidates.unsqueeze(1), w4.t())  # (B, L, H): one (B*L, D) GEMM
        x = self.activations[0](pairs + per_behaviour.index_select(0, request) + per_candidate.unsqueeze(1))
        for linear, act in zip(self.linears[1:], self.activations[1:]):
            x = act(linear(x))
        return self.out(x).squeeze(-1)


class DIN(nn.Module):
    """RankingBatch tensors -> logits (B,).

    A behaviour or candidate vector is [item embedding (item_dim), mean of its genre embeddings
    (genre_dim)], D = item_dim + genre_dim; the item -> genres table is a buffer, so history items need no
    features beyond their ids. The user side (embeddings, behaviour vectors and their projection) is
    computed once per request."""

    def __init__(self, spec: DINSpec, sparse_ids: bool = True):
        """sparse_ids: the item and user id tables grow with the catalogue and the user base, so their
        gradients are sparse by default (only the rows a step touched; see ``sparse_parameters``); False
        gives dense ones, for backends without sparse all-reduce (NCCL)."""
        super().__init__()
        self.spec = spec
        card = spec.cardinalities
        self.item_embedding = nn.Embedding(card["item"], spec.item_dim, padding_idx=0, sparse=sparse_ids)
        self.genre_embedding = nn.Embedding(card["genre"], spec.genre_dim, padding_idx=0)
        self.register_buffer("item_genres", torch.zeros(card["item"], spec.max_genres, dtype=torch.int64))
        self.user_embeddings = nn.ModuleDict(
            {
                name: nn.Embedding(card[name], spec.user_dim, sparse=sparse_ids and name == "user")
                for name in USER_FIELDS
            }
        )
        self.year_embedding = nn.Embedding(card["year"], spec.user_dim)
        self.channel_embedding = nn.Embedding(card["channel"], spec.user_dim)
        dim = spec.behaviour_dim
        self.attention = ActivationUnit(dim, spec.attention_hidden, spec.attention_activation)
        width = len(USER_FIELDS) * spec.user_dim + 2 * dim + 2 * spec.user_dim + spec.dense_width
        layers: list[nn.Module] = []
        for hidden in spec.hidden_dims:
            layers += [
                nn.Linear(width, hidden),
                activation(spec.activation, hidden),
                nn.Dropout(spec.dropout),
            ]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The parameters with sparse gradients: the item and user id tables, (num_items, item_dim) and
        (num_users, user_dim), unless the model was built with dense ones."""
        if not self.item_embedding.sparse:
            return []
        return [self.item_embedding.weight, self.user_embeddings["user"].weight]

    def set_item_genres(self, genres: torch.Tensor) -> None:
        """genres: (num_items, max_genres) genre ids of each item index, 0-padded."""
        self.item_genres.copy_(genres)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """items (...) -> (..., D)."""
        genre_mean = self.genre_mean(self.item_genres[items])
        return torch.cat([self.item_embedding(items), genre_mean], dim=-1)

    def genre_mean(self, genres: torch.Tensor) -> torch.Tensor:
        """genres (..., G) 0-padded -> (..., genre_dim) the mean of their embeddings (zeros for none)."""
        weight = (genres > 0).unsqueeze(-1).to(torch.float32)
        return (self.genre_embedding(genres) * weight).sum(-2) / weight.sum(-2).clamp(min=1.0)

    def _head(
        self, batch: dict[str, torch.Tensor], candidates: torch.Tensor, interest: torch.Tensor
    ) -> torch.Tensor:
        user_side = torch.cat([self.user_embeddings[n](batch[n]) for n in USER_FIELDS], dim=-1)
        x = torch.cat(
            [
                user_side.index_select(0, batch["request"]),
                interest,
                candidates,
                self.year_embedding(batch["year"]),
                self.channel_embedding(batch["channel"]),
                batch["dense"],
            ],
            dim=-1,
        )
        return self.mlp(x).squeeze(-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        history, request = batch["history"], batch["request"]
        behaviours = self.item_vectors(history)  # (R, L, D)
        candidates = self.item_vectors(batch["item"])  # (B, D)
        weights = self.attention(behaviours, candidates, request) * (history > 0)[request]  # (B, L)
        interest = torch.bmm(weights.unsqueeze(1), behaviours.index_select(0, request)).squeeze(1)  # (B, D)
        return self._head(batch, candidates, interest)

    def reference_forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The same model computed the straightforward way: behaviours gathered per candidate and the
        activation unit run on the concatenated [e_i, e_a, e_i - e_a, e_i * e_a] of every pair."""
        history = batch["history"][batch["request"]]  # (B, L)
        behaviours = self.item_vectors(history)  # (B, L, D)
        candidates = self.item_vectors(batch["item"])
        weights = self.attention.reference(behaviours, candidates) * (history > 0)
        interest = (weights.unsqueeze(-1) * behaviours).sum(1)
        return self._head(batch, candidates, interest)
