"""DIN (Zhou et al., 2018, Deep Interest Network): each candidate attends over the user's behaviour sequence.

For candidate a and behaviour i, an activation unit scores [e_i, e_a, e_i - e_a, e_i * e_a] with a small
MLP; the weights are not softmax-normalised (they keep the intensity of the interest) and padding is masked.
The user's interest in a is sum_i w_i e_i, fed with the user and candidate features to an MLP.

Serving speed comes from splitting the activation unit's first layer W = [W1 W2 W3 W4]:
W [e_i, e_a, e_i - e_a, e_i * e_a] = (W1 + W3) e_i + (W2 - W3) e_a + W4 (e_i * e_a), so the e_i part is
computed once per behaviour, the e_a part once per candidate and only the last term per pair.
``reference_forward`` is the straightforward concatenation, kept to test and benchmark against.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
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
        if self.training or torch.is_grad_enabled():
            p = torch.sigmoid((x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps))
            return x * (p + (1 - p) * self.slope.view(shape))
        # inference: the same function in four passes over x and one allocation, not seven and seven
        # (p x + (1 - p) alpha x = x (alpha + (1 - alpha) p), and (x - mean) / sd = x / sd - mean / sd)
        scale = torch.rsqrt(self.running_var + self.eps)
        p = torch.addcmul((-self.running_mean * scale).view(shape), x, scale.view(shape)).sigmoid_()
        gate = torch.addcmul(self.slope.view(shape), p, (1 - self.slope).view(shape), out=p)
        return gate.mul_(x)


class DerivedWeights:
    """Tensors derived from parameters for inference (sums of weight blocks, bf16 copies), rebuilt when a
    parameter they come from changes: a parameter's version counter moves on every in-place update
    (optimiser steps, load_state_dict). Per request they were ~10 small ops, each a dispatch and an
    allocation."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[tuple[int, int, int], ...], torch.Tensor]] = {}

    def get(
        self, name: str, sources: tuple[torch.Tensor, ...], make: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        key = tuple((id(t), t.data_ptr(), t._version) for t in sources)
        entry = self._entries.get(name)
        if entry is not None and entry[0] == key:
            return entry[1]
        with torch.no_grad():
            value = make()
        self._entries[name] = (key, value)
        return value


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
        # dtype of the serving path's pair product (B*H*L*D multiply-adds, most of the model's work);
        # bfloat16 runs it on AVX512-BF16 / tensor cores with float32 accumulation (see DIN.set_precision)
        self.product_dtype = torch.float32
        self.derived = DerivedWeights()

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
        if behaviours.shape[0] == 1:
            return self._one_request(behaviours[0], candidates)
        d = self.dim
        first = self.linears[0]
        w1, w2, w3, w4 = first.weight.split(d, dim=1)  # each (H, D)
        per_candidate = torch.addmm(first.bias, candidates, (w2 - w3).t())  # (B, H)
        per_behaviour = torch.matmul(behaviours, (w1 + w3).t())  # (R, L, H)
        gathered = behaviours[request]  # (B, L, D)
        pairs = torch.matmul(gathered * candidates.unsqueeze(1), w4.t())  # (B, L, H): one (B*L, D) GEMM
        x = self.activations[0](pairs + per_behaviour[request] + per_candidate.unsqueeze(1))
        for linear, act in zip(self.linears[1:], self.activations[1:]):
            x = act(linear(x))
        return self.out(x).squeeze(-1)

    def _one_request(self, behaviours: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The serving case, behaviours (L, D) of one user, candidates (B, D) -> (B, L).

        The candidate term is linear in e_a with weights that do not depend on the behaviour, so it folds
        into the pair term: the first layer's pre-activation is
        sum_j (e_i[j] W4[h, j] + (W2 - W3)[h, j]) e_a[j] + ((W1 + W3) e_i + b)[h],
        one (L*H, D+1) x (D+1, B) product whose left operand, the keys, is built per behaviour (L*H*D
        values, B/L times fewer than building it per candidate) and whose extra column of ones on the
        candidate side picks up the behaviour's constant. The result (L, H, B) keeps the hidden units on
        axis 1, where PReLU runs its fused kernel over contiguous candidate rows, and every later layer is
        a batched (H', H) x (H, B) product."""
        first = self.linears[0]
        w1, w2, w3, w4 = first.weight.split(self.dim, dim=1)  # each (H, D)
        length, count, hidden = behaviours.shape[0], candidates.shape[0], w4.shape[0]
        if torch.is_grad_enabled():
            behaviour_weight, candidate_weight = (w1 + w3).t(), (w2 - w3).unsqueeze(0)
        else:
            weight = (first.weight,)
            behaviour_weight = self.derived.get("w1+w3", weight, lambda: (w1 + w3).t().contiguous())
            candidate_weight = self.derived.get("w2-w3", weight, lambda: (w2 - w3).unsqueeze(0))
        constant = torch.addmm(first.bias, behaviours, behaviour_weight)  # (L, H)
        pair_weights = torch.addcmul(candidate_weight, behaviours.unsqueeze(1), w4.unsqueeze(0))
        keys = torch.cat([pair_weights, constant.unsqueeze(2)], dim=2)  # (L, H, D+1)
        queries = torch.cat([candidates, candidates.new_ones(count, 1)], dim=1)  # (B, D+1)
        # bf16 only for the product's operands: elementwise bf16 is slow on CPU and both are small
        dtype = candidates.dtype if torch.is_grad_enabled() else self.product_dtype
        x = torch.mm(keys.view(length * hidden, -1).to(dtype), queries.t().to(dtype))  # (L*H, B)
        x = self.activations[0](x.to(candidates.dtype).view(length, hidden, count), axis=1)
        for linear, act in zip(self.linears[1:], self.activations[1:]):
            x = act(
                torch.baddbmm(linear.bias.view(1, -1, 1), self._per_behaviour(linear.weight, x), x), axis=1
            )
        # bmm over an expanded weight, not matmul: matmul folds (L, H, B) into a (L*B, H) copy first
        scores = torch.baddbmm(self.out.bias.view(1, 1, 1), self._per_behaviour(self.out.weight, x), x)
        return scores.view(length, count).t()  # (B, L)

    @staticmethod
    def _per_behaviour(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """weight (H', H) as a (L, H', H) batch without copying, for x (L, H, B)."""
        return weight.unsqueeze(0).expand(x.shape[0], -1, -1)


class DIN(nn.Module):
    """RankingBatch tensors -> logits (B,).

    A behaviour or candidate vector is [item embedding (item_dim), mean of its genre embeddings
    (genre_dim)], D = item_dim + genre_dim; the item -> genres table is a buffer, so history items need no
    features beyond their ids. The user side (embeddings, behaviour vectors and their projection) is
    computed once per request."""

    def __init__(self, spec: DINSpec):
        super().__init__()
        self.spec = spec
        card = spec.cardinalities
        self.item_embedding = nn.Embedding(card["item"], spec.item_dim, padding_idx=0)
        self.genre_embedding = nn.Embedding(card["genre"], spec.genre_dim, padding_idx=0)
        self.register_buffer("item_genres", torch.zeros(card["item"], spec.max_genres, dtype=torch.int64))
        self.user_embeddings = nn.ModuleDict(
            {name: nn.Embedding(card[name], spec.user_dim) for name in USER_FIELDS}
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
        self.derived = DerivedWeights()

    def set_precision(self, precision: str) -> None:
        """Precision of the matrix products in inference, the attention's pair product and the MLP's
        layers: "float32" (exact to the reference form) or "bfloat16" (bf16 operands, float32
        accumulation and elementwise work; faster on AVX512-BF16 CPUs and GPUs, logits move by ~1e-3)."""
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
        if precision not in dtypes:
            raise ValueError(f"precision: must be one of {sorted(dtypes)}, got {precision!r}")
        self.attention.product_dtype = dtypes[precision]

    def set_item_genres(self, genres: torch.Tensor) -> None:
        """genres: (num_items, max_genres) genre ids of each item index, 0-padded."""
        self.item_genres.copy_(genres)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """items (...) -> (..., D)."""
        genres = self.item_genres[items]  # (..., G)
        weight = (genres > 0).unsqueeze(-1).to(torch.float32)
        genre_mean = (self.genre_embedding(genres) * weight).sum(-2) / weight.sum(-2).clamp(min=1.0)
        return torch.cat([self.item_embedding(items), genre_mean], dim=-1)

    def _head(
        self, batch: dict[str, torch.Tensor], candidates: torch.Tensor, interest: torch.Tensor
    ) -> torch.Tensor:
        user_side = torch.cat([self.user_embeddings[n](batch[n]) for n in USER_FIELDS], dim=-1)
        x = torch.cat(
            [
                user_side[batch["request"]],
                interest,
                candidates,
                self.year_embedding(batch["year"]),
                self.channel_embedding(batch["channel"]),
                batch["dense"],
            ],
            dim=-1,
        )
        return self._mlp(x).squeeze(-1)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """The head MLP, (B, F) -> (B, 1); its products in the attention's precision."""
        dtype = self.attention.product_dtype
        if dtype == torch.float32 or torch.is_grad_enabled():
            return self.mlp(x)
        for position, layer in enumerate(self.mlp):
            if isinstance(layer, nn.Linear):
                weight = self.derived.get(
                    f"mlp.{position}.{dtype}", (layer.weight,), lambda w=layer.weight: w.to(dtype).t()
                )
                # the bias and activations stay float32: bf16 elementwise work is slow on CPU
                x = torch.mm(x.to(dtype), weight).to(torch.float32).add_(layer.bias)
            else:
                x = layer(x)
        return x

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        history, request = batch["history"], batch["request"]
        behaviours = self.item_vectors(history)  # (R, L, D)
        candidates = self.item_vectors(batch["item"])  # (B, D)
        weights = self.attention(behaviours, candidates, request) * (history > 0)[request]  # (B, L)
        if behaviours.shape[0] == 1:
            interest = weights @ behaviours[0]
        else:
            interest = torch.bmm(weights.unsqueeze(1), behaviours[request]).squeeze(1)  # (B, D)
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
