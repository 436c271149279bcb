"""The optimizers every torch model here trains with: Adam, lazy where a table's gradients are sparse."""

from __future__ import annotations

import torch
from torch import nn


def adam_with_lazy_tables(
    model: nn.Module, sparse: list[nn.Parameter], learning_rate: float, weight_decay: float
) -> list[torch.optim.Optimizer]:
    """Lazy Adam (``SparseAdam``: moments updated only on the rows a step touched) for ``sparse``, the id
    tables whose gradients are sparse, and Adam with ``weight_decay`` for the rest of ``model``.

    Dense Adam over a table of millions of rows updates every row and both its moments at every step, so a
    step would cost the table rather than the batch. Lazy Adam has no weight decay: the tables train
    without it."""
    dense = [p for p in model.parameters() if all(p is not q for q in sparse)]
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.Adam(dense, lr=learning_rate, weight_decay=weight_decay)
    ]
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=learning_rate))
    return optimizers
