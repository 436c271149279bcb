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
        d = self.dim
        first = self.linears[0]
        w1, w2, w3, w4 = first.weight.split(d, dim=1)  # each (H, D)
        per_candidate = torch.addmm(first.bias, candidates, (w2 - w3).t())  # (B, H)
        if behaviours.shape[0] == 1:
            return self._one_request(behaviours[0], candidates, per_candidate, w1 + w3, w4)
        per_behaviour = torch.matmul(behaviours, (w1 + w3).t())  # (R, L, H)
        gathered = behaviours[request]  # (B, L, D)
        pairs = torch.matmul(gathered * candidates.unsqueeze(1), w4.t())  # (B, L, H): one (B*L, D) GEMM
        x = self.activations[0](pairs + per_behaviour[request] + per_candidate.unsqueeze(1))
        for linear, act in zip(self.linears[1:], self.activations[1:]):
            x = act(linear(x))
        return self.out(x).squeeze(-1)

    def _one_request(
        self,
        behaviours: torch.Tensor,
        candidates: torch.Tensor,
        per_candidate: torch.Tensor,
        w_behaviour: torch.Tensor,
        w_pair: torch.Tensor,
    ) -> torch.Tensor:
        """The serving case, behaviours (L, D) of one user. The whole first layer is one
        (L, D+1) x (D+1, B*H) product: column (a, h) of the right operand holds W4[h] * e_a + (W1 + W3)[h]
        and, in the extra row, the candidate term, met by a column of ones on the behaviour side. The result
        (L*B, H) keeps the hidden units last, so every later layer is a plain matrix product and the
        activations run on contiguous rows."""
        count, hidden, d = candidates.shape[0], w_pair.shape[0], self.dim
        # row j, column (a, h): e_a[j] * W4[h, j] + (W1 + W3)[h, j]
        # contiguous operands: a broadcast over transposed views is 5x slower
        pair_terms = (
            w_behaviour.t().contiguous().unsqueeze(1),
            candidates.t().contiguous().unsqueeze(2),
            w_pair.t().contiguous().unsqueeze(1),
        )
        if torch.is_grad_enabled():
            dtype = candidates.dtype
            columns = torch.cat([torch.addcmul(*pair_terms), per_candidate.unsqueeze(0)], dim=0)
        else:  # written in place: no (D+1, B, H) concatenation copy
            dtype = self.product_dtype
            columns = candidates.new_empty(d + 1, count, hidden)
            torch.addcmul(*pair_terms, out=columns[:d])
            columns[d] = per_candidate
            columns = columns.to(dtype)  # float32 arithmetic, then one cast: bf16 elementwise is slow on CPU
        keys = torch.cat([behaviours, behaviours.new_ones(behaviours.shape[0], 1)], dim=1).to(dtype)
        x = torch.mm(keys, columns.view(d + 1, count * hidden))  # (L, B*H)
        x = x.to(candidates.dtype).view(-1, hidden)  # (L*B, H)
        x = self.activations[0](x, axis=1)
        for linear, act in zip(self.linears[1:], self.activations[1:]):
            x = act(torch.addmm(linear.bias, x, linear.weight.t()), axis=1)
        return torch.mv(x, self.out.weight[0]).add_(self.out.bias).view(-1, count).t()  # (B, L)


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

    def set_precision(self, precision: str) -> None:
        """Precision of the attention's pair product in inference: "float32" (exact to the reference
        form) or "bfloat16" (products in bf16, accumulated in float32; 4x faster on AVX512-BF16 CPUs,
        logits move by about 1e-3)."""
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
        return self.mlp(x).squeeze(-1)

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
