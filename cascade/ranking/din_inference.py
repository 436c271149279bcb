"""DIN's forward pass for one request on CPU: numpy for the small steps, torch for the three large products.

The function is ``DIN.forward`` on a one-request batch in inference, with the activation unit folded as in
``ActivationUnit._one_request`` (one PReLU hidden layer: the output layer sums relu(z) on top of a linear
part). Only the runtime differs. The torch form spends ~70 tensor operations per request, most of them on
(L, D) or (B, D) arrays, and each goes through torch's dispatcher, whose code the request's other stages
have pushed out of the CPU's caches by the time the next request runs it. Here the gathers, the per-
behaviour keys, the linear part, the interest pooling and the user side of the head are numpy calls on
views of the same weights, and torch runs what it is fastest at: the (L*H, D+1) x (D+1, B) pair product
and the head's layers, in the model's product precision, and their activations.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cascade.ranking.din import DIN, USER_FIELDS, PReLU
from cascade.ranking.features import RankingBatch


class DINRequestScorer:
    """Logits (B,) of a one-request RankingBatch under ``model``'s weights and product precision.

    A snapshot: derived weights (summed attention blocks, bf16 copies of the head) are computed here, and
    the embedding tables are views, so a model whose weights change needs a new scorer (``DINRanker``
    keeps one per weight version)."""

    def __init__(self, model: DIN):
        if not self.supports(model):
            raise ValueError("DINRequestScorer needs a CPU model in eval mode with one PReLU attention layer")
        with torch.no_grad():
            self._build(model)

    @staticmethod
    def supports(model: DIN) -> bool:
        """The fold needs one PReLU hidden layer in the activation unit; numpy needs the CPU."""
        attention = model.attention
        return (
            len(attention.linears) == 1
            and type(attention.activations[0]) is PReLU
            and model.item_embedding.weight.device.type == "cpu"
            and not model.training
        )

    def _build(self, model: DIN) -> None:
        def array(tensor: torch.Tensor) -> np.ndarray:
            return tensor.detach().numpy()

        spec = model.spec
        self._items = array(model.item_embedding.weight)  # (N, item_dim), a view
        self._genre_combination = array(model._genre_combination())  # (N,) int32
        self._genre_means = array(model._genre_combination_means())  # (K, genre_dim)
        attention = model.attention
        first = attention.linears[0]
        w1, w2, w3, w4 = first.weight.detach().split(attention.dim, dim=1)  # each (H, D)
        self._behaviour_weight = array(w1 + w3).T.copy()  # (D, H)
        self._candidate_weight = (w2 - w3).contiguous()  # (H, D), torch: see _attention
        self._pair_weight = w4.contiguous()  # (H, D)
        self._attention_bias = array(first.bias).copy()  # (H,)
        u0, u1, u2, constant = (array(row).copy() for row in attention._linear_weights())
        self._linear = (u0, u1, u2, float(constant[0]))
        self._relu_weight = attention._relu_weight().clone()  # (1, 1, H)
        self.dtype = attention.product_dtype

        self._user_tables = tuple(array(model.user_embeddings[name].weight) for name in USER_FIELDS)
        self._year = array(model.year_embedding.weight)
        self._channel = array(model.channel_embedding.weight)
        linears = [layer for layer in model.mlp if isinstance(layer, nn.Linear)]
        activations = [layer for layer in model.mlp if not isinstance(layer, (nn.Linear, nn.Dropout))]
        user_width = len(USER_FIELDS) * spec.user_dim
        head = linears[0]
        # the user side's share of the first layer is the same for every candidate: it joins the bias
        self._user_weight = array(head.weight[:, :user_width]).T.copy()  # (U, H1)
        self._head_bias = array(head.bias).copy()
        self._layers: list[tuple[torch.Tensor, torch.Tensor, nn.Module]] = []
        for position, (linear, act) in enumerate(zip(linears[:-1], activations)):
            weight = linear.weight[:, user_width:] if position == 0 else linear.weight
            self._layers.append((weight.to(self.dtype).t().contiguous(), linear.bias.clone(), act))
        out = linears[-1]
        self._out_weight = array(out.weight[0]).copy()  # (H_last,)
        self._out_bias = float(out.bias[0])

    def _vectors(self, items: np.ndarray) -> np.ndarray:
        """items (n,) -> (n, D): [item embedding, mean genre embedding], as DIN.item_vectors."""
        return np.concatenate([self._items[items], self._genre_means[self._genre_combination[items]]], axis=1)

    def __call__(self, batch: RankingBatch) -> np.ndarray:
        if batch.num_requests != 1:
            raise ValueError(f"batch: one request expected, got {batch.num_requests}")
        with torch.inference_mode():  # the activations' inference form; no autograd records
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
        """(L, D), (B, D) -> (L, B) attention weights: out(prelu(z)) as a linear part plus the output
        layer over relu(z), z the first layer's (L, H, B) pre-activations (see ActivationUnit)."""
        length, dim = behaviours.shape
        count, hidden = len(candidates), len(self._attention_bias)
        # keys (L, H, D+1): row (i, h) is e_i * W4_h + (W2 - W3)_h, then (W1 + W3)_h . e_i + b_h
        keys = np.empty((length, hidden, dim + 1), dtype=np.float32)
        # torch's fused addcmul writes the strided (L, H, D) block in one pass: 58 us against numpy's 126
        # (a multiply and an add into the strided view) with the caches cold
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
        u0, u1, u2, constant = self._linear
        linear_rows = np.empty((length, dim + 1), dtype=np.float32)
        np.multiply(behaviours, u1, out=linear_rows[:, :dim])
        linear_rows[:, :dim] += u0
        linear_rows[:, dim] = behaviours @ u2 + constant
        linear = torch.from_numpy(linear_rows @ queries.T).view(length, 1, count)
        pair_keys = torch.from_numpy(keys).view(length * hidden, dim + 1).to(self.dtype)
        z = torch.mm(pair_keys, torch.from_numpy(queries).to(self.dtype).t())  # (L*H, B)
        z = z.to(torch.float32).view(length, hidden, count).relu_()
        scores = torch.baddbmm(linear, self._relu_weight.expand(length, -1, -1), z)
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
