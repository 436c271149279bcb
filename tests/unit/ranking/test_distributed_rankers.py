"""Data-parallel training of the neural rankers: two real processes in a gloo group against one process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cascade.core.distributed import join_local_group
from cascade.core.metrics import auc
from cascade.ranking.config import DINConfig, RankingConfig, WideDeepConfig
from cascade.ranking.registry import DATA_PARALLEL_RANKERS, create_ranker, load_ranker
from tests.unit.ranking.batches import RandomItems, StubSchema, planted_labels, synthetic_batch

TRAINING = {"epochs": 3, "batch_size": 128, "learning_rate": 5e-3}
MODELS = {"din": DINConfig(**TRAINING), "wide_deep": WideDeepConfig(**TRAINING)}


def _problem():
    rng = np.random.default_rng(11)
    items = RandomItems(rng)
    train = synthetic_batch(rng, 120, 40, 8, items)
    val = synthetic_batch(rng, 15, 40, 8, items)
    test = synthetic_batch(rng, 30, 40, 8, items)
    return items, train, val, test


def _fit(ranker_type: str, items, train, val):
    ranker = create_ranker(RankingConfig(model=MODELS[ranker_type]), StubSchema(), items)
    metrics = ranker.fit(
        train,
        planted_labels(train, items),
        seed=0,
        progress=False,
        validation=(val, planted_labels(val, items)),
    )
    return ranker, metrics


def _worker(rank: int, out: str) -> None:
    join_local_group(rank, 2, out)
    try:
        items, train, val, _ = _problem()
        for ranker_type in DATA_PARALLEL_RANKERS:
            ranker, metrics = _fit(ranker_type, items, train, val)
            folder = Path(out, f"{ranker_type}-{rank}")
            folder.mkdir()
            ranker.save(folder)
            (folder / "metrics.json").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def test_two_processes_train_each_neural_ranker_as_well_as_one_process(tmp_path):
    """For DIN and Wide&Deep: two processes end with identical weights and the same epoch kept, each took
    half the steps, and the model ranks held-out requests as well, within noise, as one process alone."""
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    items, train, val, test = _problem()
    labels = planted_labels(test, items)
    for ranker_type in DATA_PARALLEL_RANKERS:
        first, second = (load_ranker(tmp_path / f"{ranker_type}-{r}") for r in (0, 1))
        for (name, x), (_, y) in zip(
            first.model.state_dict().items(), second.model.state_dict().items(), strict=True
        ):
            assert torch.equal(x, y), (ranker_type, name)
        shared = [json.loads((tmp_path / f"{ranker_type}-{r}" / "metrics.json").read_text()) for r in (0, 1)]
        for metrics in shared:  # the running loss is each process's own batches'
            metrics.pop("train_logloss")
        assert shared[0] == shared[1]
        assert shared[0]["training_processes"] == 2
        alone, alone_metrics = _fit(ranker_type, items, train, val)
        per_epoch = alone_metrics["steps"] / TRAINING["epochs"]
        assert shared[0]["steps"] == TRAINING["epochs"] * (per_epoch // 2)
        one, two = auc(labels, alone.score(test)), auc(labels, first.score(test))
        assert one > 0.75 and abs(two - one) < 0.05, (ranker_type, one, two)
