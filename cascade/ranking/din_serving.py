"""DIN's serving form: the logits of one request, from weights folded once when the form is built.

``DINServing.build(model, precision)`` is the named step that turns a trained ``DIN`` into what a server
calls per request; it computes the same function as ``DIN.forward`` (and ``DIN.reference_forward``, which
the tests hold it to). What differs is the runtime:

* Items: a catalogue has few distinct genre sets, so an item's genre mean is one gather from the means of
  those sets rather than gathering, embedding and averaging G genres per item.
* Attention: the activation unit's first layer W = [W1 W2 W3 W4] over [e_i, e_a, e_i - e_a, e_i * e_a] is
  sum_j (e_i[j] W4[h, j] + (W2 - W3)[h, j]) e_a[j] + ((W1 + W3) e_i + b)[h]: the candidate term folds into
  the pair term, so the layer is one (L*H, D+1) x (D+1, B) product whose left operand, the keys, is built per
  behaviour (L*H*D values, B/L times fewer than per candidate) and whose right operand is [e_a, 1]. The
  result (L, H, B) keeps the hidden units on axis 1 and every later layer is a batched (H', H) x (H, B)
  product. With one PReLU hidden layer (the default), out(prelu(z)) = sum_h v_h a_h z_h + sum_h v_h (1 -
  a_h) relu(z_h) + c, and the first sum is linear in the keys: one (L, D+1) row per behaviour, then an
  in-place relu instead of L*H*B slopes applied elementwise.
* The user side's share of the head's first layer is the same for every candidate: it joins that layer's
  bias. Dice runs in four passes over its input from per-unit terms computed once.
* The small steps (gathers, the per-behaviour keys, the linear part, the interest pooling, the user side)
  run in numpy on views of the weights; torch runs the large products, in the chosen precision, and their
  activations. Each of torch's ~70 per-request calls on (L, D) or (B, D) tensors goes through its
  dispatcher, whose code the request's other stages push out of the CPU's caches between requests.

A form is a snapshot of the weights it was built from (embedding tables are views, derived weights are
copies): a model whose weights change needs a new form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cascade.ranking.din import DIN, USER_FIELDS, ActivationUnit, Dice, PReLU
from cascade.ranking.features import RankingBatch

Precision = Literal["float32", "bfloat16"]
PRECISIONS: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def genre_combinations(item_genres: torch.Tensor, genre_cardinality: int) -> torch.Tensor:
    """(num_items, G) 0-padded genre ids -> (num_items,) int64: the index of each item's genre row among the
    distinct rows."""
    base = max(genre_cardinality, int(item_genres.max()) + 1, 2)
    if item_genres.shape[1] * math.log2(base) < 62:  # each row as one base-`base` number: a 1-D unique
        powers = base ** torch.arange(item_genres.shape[1], dtype=torch.int64)
        _, combination = torch.unique((item_genres * powers).sum(1), return_inverse=True)
    else:
        _, combination = torch.unique(item_genres, dim=0, return_inverse=True)
    return combination


def activation_form(module: nn.Module, hidden_axis: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A PReLU or Dice module in inference, for inputs whose hidden units lie on ``hidden_axis``."""
    if type(module) is PReLU:
        if hidden_axis != 1:
            raise ValueError("torch's fused PReLU kernel takes its channels on axis 1")
        slope = module.slope.detach().clone()
        return lambda x: F.prelu(x, slope)
    if isinstance(module, Dice):
        shift, scale, slope, rest = module.inference_terms()

        def shape(term: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            view = [1] * x.dim()
            view[hidden_axis] = -1
            return term.view(view)

        def dice(x: torch.Tensor) -> torch.Tensor:
            # p x + (1 - p) alpha x = x (alpha + (1 - alpha) p), and (x - mean) / sd = x / sd - mean / sd
            p = torch.addcmul(shape(shift, x), x, shape(scale, x)).sigmoid_()
            return torch.addcmul(shape(slope, x), p, shape(rest, x), out=p).mul_(x)

        return dice
    raise ValueError(f"no serving form for activation {type(module).__name__}")


class DINServing:
    """Logits (B,) of a one-request RankingBatch under a DIN's weights, in ``precision`` ("float32", exact
    to the reference form up to rounding, or "bfloat16": bf16 operands of the attention's pair product and
    of the head's layers with float32 accumulation, faster on AVX512-BF16 CPUs, logits within ~1e-3)."""

    @classmethod
    def build(cls, model: DIN, precision: Precision = "float32") -> DINServing:
        """The serving form of a trained ``model`` (put in eval mode; its weights are not changed)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision: must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if model.item_embedding.weight.device.type != "cpu":
            raise ValueError("DINServing runs on the CPU; score GPU batches with DIN.forward")
        model.eval()
        with torch.no_grad():
            return cls(model, PRECISIONS[precision])

    def __init__(self, model: DIN, dtype: torch.dtype):
        """Use ``build``: it checks the arguments and holds autograd off while the weights fold."""

        def array(tensor: torch.Tensor) -> np.ndarray:
            return tensor.detach().numpy()

        spec = model.spec
        self.dtype = dtype
        self._items = array(model.item_embedding.weight)  # (N, item_dim), a view
        combination = genre_combinations(model.item_genres, spec.cardinalities["genre"])
        first_items = torch.full((int(combination.max()) + 1,), len(combination), dtype=torch.int64)
        first_items.scatter_reduce_(0, combination, torch.arange(len(combination)), reduce="amin")
        self._genre_combination = array(combination.to(torch.int32))  # (N,)
        self._genre_means = array(model.genre_mean(model.item_genres[first_items]))  # (K, genre_dim)
        self._build_attention(model.attention)

        self._user_tables = tuple(array(model.user_embeddings[name].weight) for name in USER_FIELDS)
        self._year = array(model.year_embedding.weight)
        self._channel = array(model.channel_embedding.weight)
        linears = [layer for layer in model.mlp if isinstance(layer, nn.Linear)]
        activations = [layer for layer in model.mlp if not isinstance(layer, (nn.Linear, nn.Dropout))]
        user_width = len(USER_FIELDS) * spec.user_dim
        head = linears[0]
        self._user_weight = array(head.weight[:, :user_width]).T.copy()  # (U, H1)
        self._head_bias = array(head.bias).copy()
        self._layers: list[tuple[torch.Tensor, torch.Tensor, Callable]] = []
        for position, (linear, act) in enumerate(zip(linears[:-1], activations)):
            weight = linear.weight[:, user_width:] if position == 0 else linear.weight
            layer = (weight.to(dtype).t().contiguous(), linear.bias.clone(), activation_form(act, 1))
            self._layers.append(layer)
        out = linears[-1]
        self._out_weight = array(out.weight[0]).copy()  # (H_last,)
        self._out_bias = float(out.bias[0])

    def _build_attention(self, unit: ActivationUnit) -> None:
        first = unit.linears[0]
        w1, w2, w3, w4 = first.weight.split(unit.dim, dim=1)  # each (H, D)
        self._behaviour_weight = (w1 + w3).numpy().T.copy()  # (D, H)
        self._candidate_weight = (w2 - w3).contiguous()  # (H, D)
        self._pair_weight = w4.contiguous()  # (H, D)
        self._attention_bias = first.bias.numpy().copy()  # (H,)
        self._folded = len(unit.linears) == 1 and type(unit.activations[0]) is PReLU
        if self._folded:
            v, a = unit.out.weight[0], unit.activations[0].slope  # (H,) each
            va = v * a
            # the linear part's rows u0, u1, u2 and constant c0 (see _attention)
            self._linear = (
                (va @ (w2 - w3)).numpy().copy(),
                (va @ w4).numpy().copy(),
                (va @ (w1 + w3)).numpy().copy(),
                float(va @ first.bias + unit.out.bias[0]),
            )
            self._relu_weight = (v * (1 - a)).view(1, 1, -1).clone()  # (1, 1, H)
        else:
            self._attention_layers = [
                (linear.weight.clone(), linear.bias.view(1, -1, 1).clone(), activation_form(act, 1))
                for linear, act in zip(unit.linears[1:], unit.activations[1:])
            ]
            self._first_activation = activation_form(unit.activations[0], 1)
            self._attention_out = (unit.out.weight.clone(), unit.out.bias.view(1, 1, 1).clone())

    def _vectors(self, items: np.ndarray) -> np.ndarray:
        """items (n,) -> (n, D): [item embedding, mean genre embedding], as DIN.item_vectors."""
        return np.concatenate([self._items[items], self._genre_means[self._genre_combination[items]]], axis=1)

    def __call__(self, batch: RankingBatch) -> np.ndarray:
        if batch.num_requests != 1:
            raise ValueError(f"batch: one request expected, got {batch.num_requests}")
        with torch.inference_mode():
            return self._logits(batch)

    def _logits(self, batch: RankingBatch) -> np.ndarray:
        history = batch.history[0]
        behaviours = self._vectors(history)  # (L, D)
        candidates = self._vectors(batch.item)  # (B, D)
        scores = self._attention(behaviours, candidates)  # (L, B)
        # padding is masked on the behaviours: a padded one adds nothing to any candidate's interest
        interest = scores.T @ (behaviours * (history > 0)[:, None])  # (B, D)
        user_side = np.concatenate(
            [table[getattr(batch, name)[0]] for table, name in zip(self._user_tables, USER_FIELDS)]
        )
        x = np.concatenate(
            [interest, candidates, self._year[batch.year], self._channel[batch.channel], batch.dense],
            axis=1,
            dtype=np.float32,
        )
        return self._head(x, self._head_bias + user_side @ self._user_weight)

    def _attention(self, behaviours: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """(L, D), (B, D) -> (L, B) attention weights from the first layer's (L, H, B) pre-activations z."""
        length, dim = behaviours.shape
        count, hidden = len(candidates), len(self._attention_bias)
        # keys (L, H, D+1): row (i, h) is e_i * W4_h + (W2 - W3)_h, then (W1 + W3)_h . e_i + b_h
        keys = np.empty((length, hidden, dim + 1), dtype=np.float32)
        # torch's fused addcmul writes the strided (L, H, D) block in one pass, twice as fast as numpy's
        # multiply and add into the strided view with the caches cold
        torch.addcmul(
            self._candidate_weight,
            torch.from_numpy(behaviours).unsqueeze(1),
            self._pair_weight,
            out=torch.from_numpy(keys)[:, :, :dim],
        )
        keys[:, :, dim] = behaviours @ self._behaviour_weight + self._attention_bias
        queries = np.empty((count, dim + 1), dtype=np.float32)  # [e_a, 1]
        queries[:, :dim] = candidates
        queries[:, dim] = 1.0
        pair_keys = torch.from_numpy(keys).view(length * hidden, dim + 1).to(self.dtype)
        z = torch.mm(pair_keys, torch.from_numpy(queries).to(self.dtype).t())  # (L*H, B)
        z = z.to(torch.float32).view(length, hidden, count)
        if self._folded:
            # out(prelu(z)) = linear part + v (1 - a) . relu(z): r_i . [e_a, 1] with r_i = [u0 + e_i * u1,
            # e_i . u2 + c0], u0 = va (W2 - W3), u1 = va W4, u2 = va (W1 + W3), c0 = va . b + c, va = v * a
            u0, u1, u2, constant = self._linear
            linear_rows = np.empty((length, dim + 1), dtype=np.float32)
            np.multiply(behaviours, u1, out=linear_rows[:, :dim])
            linear_rows[:, :dim] += u0
            linear_rows[:, dim] = behaviours @ u2 + constant
            linear = torch.from_numpy(linear_rows @ queries.T).view(length, 1, count)
            scores = torch.baddbmm(linear, self._relu_weight.expand(length, -1, -1), z.relu_())
            return scores.view(length, count).numpy()
        x = self._first_activation(z)
        # bmm over an expanded weight, not matmul: matmul folds (L, H, B) into a (L*B, H) copy first
        for weight, bias, act in self._attention_layers:
            x = act(torch.baddbmm(bias, weight.unsqueeze(0).expand(length, -1, -1), x))
        weight, bias = self._attention_out
        scores = torch.baddbmm(bias, weight.unsqueeze(0).expand(length, -1, -1), x)
        return scores.view(length, count).numpy()

    def _head(self, x: np.ndarray, first_bias: np.ndarray) -> np.ndarray:
        """(B, F) without the user columns, the first layer's bias with the user side -> logits (B,)."""
        hidden = torch.from_numpy(x)
        for position, (weight, bias, act) in enumerate(self._layers):
            bias = torch.from_numpy(first_bias) if position == 0 else bias
            if self.dtype == torch.float32:
                hidden = torch.addmm(bias, hidden, weight)
            else:  # bias and activations in float32: bf16 elementwise work is slow on CPU
                hidden = torch.mm(hidden.to(self.dtype), weight).to(torch.float32).add_(bias)
            hidden = act(hidden)
        return hidden.numpy() @ self._out_weight + self._out_bias
