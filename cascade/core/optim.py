"""The optimizers every torch model here trains with: Adam, lazy where a table's gradients are sparse."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn


class ModelWithIdTables(Protocol):
    """A model whose id tables may have sparse gradients (the two-tower, DIN, Wide&Deep)."""

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def sparse_parameters(self) -> list[nn.Parameter]: ...


def adam_with_lazy_tables(
    model: ModelWithIdTables, learning_rate: float, weight_decay: float
) -> list[torch.optim.Optimizer]:
    """Lazy Adam (``SparseAdam``: moments updated only on the rows a step touched) for the model's
    ``sparse_parameters()``, the id tables whose gradients are sparse, and Adam with ``weight_decay`` for
    the rest.

    Dense Adam over a table of millions of rows updates every row and both its moments at every step, so a
    step would cost the table rather than the batch. Lazy Adam has no weight decay: the tables train
    without it."""
    sparse = model.sparse_parameters()
    dense = [p for p in model.parameters() if all(p is not q for q in sparse)]
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.Adam(dense, lr=learning_rate, weight_decay=weight_decay)
    ]
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=learning_rate))
    return optimizers
