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
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

USER_FIELDS = ("user", "gender", "age", "occupation", "zip")
Derived = TypeVar("Derived")


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


class DerivedWeights:
    """Tensors derived from parameters for inference (sums of weight blocks, bf16 copies), rebuilt when a
    parameter they come from changes: a parameter's version counter moves on every in-place update
    (optimiser steps, load_state_dict). Per request they were ~10 small ops, each a dispatch and an
    allocation."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[tuple[int, int, int], ...], object]] = {}

    def get(self, name: str, sources: tuple[torch.Tensor, ...], make: Callable[[], Derived]) -> Derived:
        key = tuple((id(t), t.data_ptr(), t._version) for t in sources)
        entry = self._entries.get(name)
        if entry is not None and entry[0] == key:
            return entry[1]
        with torch.no_grad():
            value = make()
        self._entries[name] = (key, value)
        return value


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
        self.derived = DerivedWeights()
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
        # (p x + (1 - p) alpha x = x (alpha + (1 - alpha) p), and (x - mean) / sd = x / sd - mean / sd),
        # with the per-unit terms computed once per weight update rather than per call
        shift, scale, slope, rest = self.derived.get(
            f"inference{tuple(shape)}",
            (self.running_mean, self.running_var, self.slope),
            lambda: self._inference_terms(shape),
        )
        p = torch.addcmul(shift, x, scale).sigmoid_()
        return torch.addcmul(slope, p, rest, out=p).mul_(x)

    def _inference_terms(self, shape: list[int]) -> torch.Tensor:
        """(4, *shape): -mean / sd, 1 / sd, alpha and 1 - alpha, each shaped to broadcast over x."""
        scale = torch.rsqrt(self.running_var + self.eps)
        terms = torch.stack([-self.running_mean * scale, scale, self.slope, 1 - self.slope])
        return terms.view(4, *shape)


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
        x = x.to(candidates.dtype).view(length, hidden, count)
        if self._folds_prelu_into_output():
            # (L, 1, B) output layer over relu(x) on top of the linear part (see _linear_part)
            linear = torch.mm(self._linear_part(behaviours), queries.t()).view(length, 1, count)
            relu_weight = self.derived.get("out*(1-slope)", self._fold_sources(), self._relu_weight)
            scores = torch.baddbmm(linear, relu_weight.expand(length, -1, -1), x.relu_())
            return scores.view(length, count).t()  # (B, L)
        x = self.activations[0](x, axis=1)
        for linear, act in zip(self.linears[1:], self.activations[1:]):
            x = act(
                torch.baddbmm(linear.bias.view(1, -1, 1), self._per_behaviour(linear.weight, x), x), axis=1
            )
        # bmm over an expanded weight, not matmul: matmul folds (L, H, B) into a (L*B, H) copy first
        scores = torch.baddbmm(self.out.bias.view(1, 1, 1), self._per_behaviour(self.out.weight, x), x)
        return scores.view(length, count).t()  # (B, L)

    def _folds_prelu_into_output(self) -> bool:
        """Inference with one PReLU hidden layer: out(prelu(z)) = sum_h v_h a_h z_h + sum_h v_h (1 - a_h)
        relu(z_h) + c, and the first sum is linear in the keys, so it is one (L, D+1) row per behaviour
        rather than L*H*B slopes applied elementwise. An in-place relu then replaces PReLU's pass that
        wrote a second (L, H, B) tensor (on the synthetic-1m model, 50 x 36 x 500: 0.13 -> 0.04 ms)."""
        return len(self.linears) == 1 and type(self.activations[0]) is PReLU and not torch.is_grad_enabled()

    def _fold_sources(self) -> tuple[torch.Tensor, ...]:
        first = self.linears[0]
        return (first.weight, first.bias, self.activations[0].slope, self.out.weight, self.out.bias)

    def _relu_weight(self) -> torch.Tensor:
        """(1, 1, H): v (1 - a), the output weights of relu(z)."""
        return (self.out.weight[0] * (1 - self.activations[0].slope)).view(1, 1, -1)

    def _linear_weights(self) -> torch.Tensor:
        """(4, D): the rows u0, u1, u2 and [c0, 0...] of the linear part (see _linear_part)."""
        first = self.linears[0]
        w1, w2, w3, w4 = first.weight.split(self.dim, dim=1)  # each (H, D)
        va = self.out.weight[0] * self.activations[0].slope  # (H,)
        constant = first.weight.new_zeros(self.dim)
        constant[0] = va @ first.bias + self.out.bias[0]
        return torch.stack([va @ (w2 - w3), va @ w4, va @ (w1 + w3), constant])

    def _linear_part(self, behaviours: torch.Tensor) -> torch.Tensor:
        """behaviours (L, D) -> (L, D+1) rows r_i with r_i . [e_a, 1] = sum_h v_h a_h z_h(i, a) + c, where
        z_h(i, a) = (e_i W4_h + (W2 - W3)_h) . e_a + ((W1 + W3)_h . e_i + b_h) is the first layer:
        r_i = [u0 + e_i * u1, e_i . u2 + c0] with u0 = va (W2 - W3), u1 = va W4, u2 = va (W1 + W3),
        c0 = va . b + c, va = v * a."""
        u0, u1, u2, constant = self.derived.get("linear_part", self._fold_sources(), self._linear_weights)
        rows = torch.addcmul(u0, behaviours, u1)  # (L, D)
        return torch.cat([rows, torch.addmv(constant[:1], behaviours, u2).unsqueeze(1)], dim=1)

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
        if torch.is_grad_enabled():
            genre_mean = self._genre_mean(self.item_genres[items])
            return torch.cat([self.item_embedding(items), genre_mean], dim=-1)
        # a catalogue has few distinct genre sets (573 among 1M synthetic items): one gather from their
        # means instead of gathering, embedding and averaging G genres per item
        combination, means = self._genre_combination(), self._genre_combination_means()
        # F.embedding and take, not tensor[items]: advanced indexing costs 3x as much per gather here
        genre_mean = F.embedding(combination.take(items), means)
        return torch.cat([F.embedding(items, self.item_embedding.weight), genre_mean], dim=-1)

    def _genre_mean(self, genres: torch.Tensor) -> torch.Tensor:
        """genres (..., G) 0-padded -> (..., genre_dim) the mean of their embeddings (zeros for none)."""
        weight = (genres > 0).unsqueeze(-1).to(torch.float32)
        return (self.genre_embedding(genres) * weight).sum(-2) / weight.sum(-2).clamp(min=1.0)

    def _genre_combination(self) -> torch.Tensor:
        """The cached ``_genre_combinations``, rebuilt when item_genres changes."""
        return self.derived.get("genre_combination", (self.item_genres,), self._genre_combinations)

    def _genre_combination_means(self) -> torch.Tensor:
        """(K, genre_dim): the cached genre mean of each distinct genre row (see ``_genre_combination``)."""
        return self.derived.get(
            "genre_combination_means",
            (self.item_genres, self.genre_embedding.weight),
            lambda: self._genre_mean(self.item_genres[self._combination_items()]),
        )

    def _genre_combinations(self) -> torch.Tensor:
        """(num_items,) int32: the index of each item's genre row among the distinct rows of item_genres."""
        genres = self.item_genres
        base = max(self.spec.cardinalities["genre"], int(genres.max()) + 1, 2)
        if genres.shape[1] * math.log2(base) < 62:  # each row as one base-`base` number: a 1-D unique
            powers = base ** torch.arange(genres.shape[1], dtype=torch.int64, device=genres.device)
            keys = (genres * powers).sum(1)
            _, combination = torch.unique(keys, return_inverse=True)
        else:
            _, combination = torch.unique(genres, dim=0, return_inverse=True)
        return combination.to(torch.int32)

    def _combination_items(self) -> torch.Tensor:
        """(K,) one item index holding each distinct genre row, in combination order."""
        combination = self._genre_combination()
        items = torch.arange(len(combination), device=combination.device)
        first = torch.full((int(combination.max()) + 1,), len(combination), device=combination.device)
        return first.scatter_reduce_(0, combination.to(torch.int64), items, reduce="amin")

    def _head(
        self, batch: dict[str, torch.Tensor], candidates: torch.Tensor, interest: torch.Tensor
    ) -> torch.Tensor:
        if torch.is_grad_enabled():
            user_side = torch.cat([self.user_embeddings[n](batch[n]) for n in USER_FIELDS], dim=-1)
        else:  # the same lookups without nn.Module's per-call dispatch
            tables = self.user_embeddings
            user_side = torch.cat([F.embedding(batch[n], tables[n].weight) for n in USER_FIELDS], dim=-1)
        if len(user_side) == 1 and not torch.is_grad_enabled():
            # one request: the user side's share of the first layer is the same for every candidate, so
            # it joins that layer's bias, (1, H1), and the candidates' rows go without its columns
            first = self.mlp[0]
            user_bias = torch.addmm(first.bias, user_side, first.weight[:, : user_side.shape[1]].t())
            parts = []
        else:
            user_bias, parts = None, [user_side[batch["request"]]]
        x = torch.cat(
            [
                *parts,
                interest,
                candidates,
                self.year_embedding(batch["year"]),
                self.channel_embedding(batch["channel"]),
                batch["dense"],
            ],
            dim=-1,
        )
        return self._mlp(x, user_bias).squeeze(-1)

    def _mlp(self, x: torch.Tensor, user_bias: torch.Tensor | None = None) -> torch.Tensor:
        """The head MLP, (B, F) -> (B, 1); its products in the attention's precision. With ``user_bias``
        (1, H1) (inference only), x lacks the first layer's leading columns, the user side, whose product
        that bias already holds."""
        if torch.is_grad_enabled():
            return self.mlp(x)
        dtype = self.attention.product_dtype
        skipped = self.mlp[0].in_features - x.shape[1]
        for position, layer in enumerate(self.mlp):
            if isinstance(layer, nn.Linear):
                first = position == 0
                columns = skipped if first else 0
                weight = self.derived.get(
                    f"mlp.{position}.{dtype}.{columns}",
                    (layer.weight,),
                    lambda w=layer.weight, c=columns: w[:, c:].to(dtype).t(),
                )
                bias = user_bias if first and user_bias is not None else layer.bias
                if dtype == torch.float32:
                    x = torch.addmm(bias, x, weight)
                else:  # the bias and activations stay float32: bf16 elementwise work is slow on CPU
                    x = torch.mm(x.to(dtype), weight).to(torch.float32).add_(bias)
            elif not (isinstance(layer, nn.Dropout) and not self.training):  # eval dropout: identity
                x = layer(x)
        return x

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        history, request = batch["history"], batch["request"]
        behaviours = self.item_vectors(history)  # (R, L, D)
        candidates = self.item_vectors(batch["item"])  # (B, D)
        weights = self.attention(behaviours, candidates, request)  # (B, L)
        if behaviours.shape[0] == 1:  # padding masked on the (L, D) behaviours, not the (B, L) weights
            interest = weights @ (behaviours[0] * (history[0] > 0).unsqueeze(1))
        else:
            weights = weights * (history > 0)[request]
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
