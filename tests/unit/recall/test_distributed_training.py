"""Data-parallel two-tower training: two real processes in a gloo group against one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cascade.core.distributed import batch_starts, join_local_group
from cascade.recall.config import RecallConfig
from cascade.recall.training import train_two_tower
from cascade.recall.two_tower import TwoTowerModel
from tests.unit.recall.held_out import HISTORY, held_out_problem, held_out_recall

# sampled negatives, as at a million items, where data-parallel training is for
CONFIG = RecallConfig(
    epochs=4, batch_size=256, uniform_negatives=128, learning_rate=1e-2, full_softmax_max_items=0
)


def _train(schema, data, seq):
    users, items = schema.user_table(data.users), schema.item_table(data.items)
    return train_two_tower(CONFIG, schema, users, items, seq, seed=3, history_length=HISTORY, progress=False)


def _worker(rank: int, out: str) -> None:
    join_local_group(rank, 2, out)
    try:
        data, schema, _, seq = held_out_problem()
        result = _train(schema, data, seq)
        result.model.save(Path(out), prefix=f"rank{rank}_")
        Path(out, f"rank{rank}.steps").write_text(str(result.steps))
    finally:
        dist.destroy_process_group()


def test_batches_are_shared_out_evenly_and_whole():
    # 10 batches of 4 (the last of 3): process 0 takes batches 0, 2, ..., process 1 batches 1, 3, ...
    assert list(batch_starts(39, 4, 2, 0)) == [0, 8, 16, 24, 32]
    assert list(batch_starts(39, 4, 2, 1)) == [4, 12, 20, 28, 36]
    assert list(batch_starts(37, 4, 2, 1)) == [4, 12, 20, 28]  # a last batch of one is left out
    assert list(batch_starts(9, 4, 1, 0)) == [0, 4]
    with pytest.raises(ValueError, match="too few"):
        batch_starts(5, 4, 2, 0)


def test_two_processes_train_one_model_as_good_as_one_process(tmp_path):
    """Two processes (gloo, sparse gradients all-reduced) end with identical weights, each took half the
    steps of a global batch twice the size, and the model recalls held-out items as well, within noise, as
    one process trained alone."""
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    first, second = (TwoTowerModel.load(tmp_path, prefix=f"rank{r}_") for r in (0, 1))
    for (name, x), (_, y) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(x, y), name

    data, schema, split, seq = held_out_problem()
    alone = _train(schema, data, seq)
    per_epoch = alone.steps // CONFIG.epochs
    assert int((tmp_path / "rank0.steps").read_text()) == CONFIG.epochs * (per_epoch // 2)
    one, two = (held_out_recall(m, schema, data, split, seq) for m in (alone.model, first))
    assert one > 0.1 and abs(two - one) < 0.2 * one, (one, two)
