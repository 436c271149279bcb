"""The three rankers: each learns a planted signal and round-trips; LightGBM's cross-validation;
Wide&Deep's crosses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cascade.core.metrics import auc, gauc
from cascade.ranking.config import DINConfig, LightGBMConfig, RankingConfig, WideDeepConfig
from cascade.ranking.features import (
    RankingBatch,
)
from cascade.ranking.registry import RANKERS, create_ranker, load_ranker
from cascade.ranking.wide_deep import WideCross
from tests.unit.ranking.batches import StubSchema, planted_labels, synthetic_batch


@pytest.mark.parametrize("ranker_type", sorted(RANKERS))
def test_each_ranker_learns_a_planted_signal_and_round_trips(items, ranker_type, tmp_path):
    rng = np.random.default_rng(5)
    train = synthetic_batch(rng, 150, 40, 8, items)
    val = synthetic_batch(rng, 15, 40, 8, items)
    test = synthetic_batch(rng, 20, 40, 8, items)
    neural = {"epochs": 5, "batch_size": 256, "learning_rate": 5e-3}
    model = {
        "lightgbm": LightGBMConfig(rounds=60, cv_folds=3),
        "din": DINConfig(**neural),
        "wide_deep": WideDeepConfig(**neural),
    }[ranker_type]
    config = RankingConfig(model=model)
    ranker = create_ranker(config, StubSchema(), items)
    metrics = ranker.fit(
        train,
        planted_labels(train, items),
        seed=0,
        progress=False,
        validation=(val, planted_labels(val, items)),
    )
    assert metrics["validation_gauc"] > 0.5
    scores = ranker.score(test)
    labels = planted_labels(test, items)
    assert scores.shape == (len(test),) and scores.dtype == np.float32
    assert scores.min() >= 0 and scores.max() <= 1
    assert auc(labels, scores) > 0.75
    assert gauc(labels, scores, test.request) > 0.75
    ranker.save(tmp_path)
    np.testing.assert_allclose(load_ranker(tmp_path).score(test), scores, atol=1e-6)


def test_lightgbm_keeps_the_objective_and_rounds_that_cross_validate_best(items):
    rng = np.random.default_rng(9)
    train = synthetic_batch(rng, 60, 30, 8, items)
    val = synthetic_batch(rng, 12, 30, 8, items)
    config = RankingConfig(
        model=LightGBMConfig(rounds=25, cv_folds=3, objectives=("lambdarank", "rank_xendcg"))
    )
    ranker = create_ranker(config, StubSchema(), items)
    labels, val_labels = planted_labels(train, items), planted_labels(val, items)
    both = RankingBatch.concat([train, val])
    cv = ranker.cross_validate(both, np.concatenate([labels, val_labels]), seed=0)
    assert set(cv.curves) == {"lambdarank", "rank_xendcg"}
    assert all(c.shape == (25,) and (c > 0).all() for c in cv.curves.values())
    # every request sits in exactly one fold, and the folds are about equal
    assert np.bincount(cv.fold_of[np.unique(both.request)]).tolist() == [24, 24, 24]
    metrics = ranker.fit(train, labels, seed=0, progress=False, validation=(val, val_labels))
    objective, rounds = cv.best()
    assert ranker.objective == objective == max(cv.curves, key=lambda name: cv.curves[name].max())
    assert metrics["rounds"] == rounds
    assert [b.current_iteration() for b in ranker.boosters] == [rounds] * 3
    # the fold models score together: their raw scores averaged
    features = ranker.features(val)
    mean = np.mean([b.predict(features, num_iteration=rounds) for b in cv.boosters[objective]], axis=0)
    np.testing.assert_allclose(ranker.raw_scores(val), mean, rtol=1e-6)
    assert metrics["cv_ndcg@10"] == pytest.approx(float(cv.curves[objective].max()))
    assert metrics["validation_auc"] > 0.75  # out-of-fold: no candidate scored by a model that saw it
    assert ranker.platt[0] > 0  # calibration keeps the order


def test_lightgbm_cross_validation_curves_are_lightgbms_own_and_stop_early(items):
    """Folds trained a round at a time give the curve lgb.train records for the same fold; an objective
    stops ``early_stopping_rounds`` after the mean curve's best round."""
    import lightgbm as lgb

    rng = np.random.default_rng(4)
    batch = synthetic_batch(rng, 60, 30, 8, items)
    labels = planted_labels(batch, items).astype(np.float64)
    config = RankingConfig(
        model=LightGBMConfig(rounds=400, cv_folds=3, objectives=("lambdarank",), early_stopping_rounds=5)
    )
    ranker = create_ranker(config, StubSchema(), items)
    cv = ranker.cross_validate(batch, labels, seed=0)
    curve = cv.curves["lambdarank"]
    assert len(curve) < 400 and len(curve) - 1 - int(curve.argmax()) == 5
    requests = np.unique(batch.request)
    fold = cv.fold_of[requests]
    record: dict = {}
    train = ranker._grouped(batch, labels, requests[fold != 0])
    held = ranker._grouped(batch, labels, requests[fold == 0]).set_reference(train)
    lgb.train(
        ranker._params("lambdarank", 0),
        train,
        num_boost_round=len(curve),
        valid_sets=[held],
        callbacks=[lgb.record_evaluation(record)],
    )
    # the fold model after its last round scores its held-out fold as lgb.train's model does
    assert cv.boosters["lambdarank"][0].eval_valid()[0][2] == pytest.approx(record["valid_0"]["ndcg@10"][-1])


def test_wide_cross_of_history_and_candidate_sums_one_weight_per_pair():
    cross = WideCross("history", "item", 10, 10, hash_buckets=1_000)
    assert not cross.hashed
    with torch.no_grad():
        cross.weight.weight.copy_(torch.arange(100, dtype=torch.float32).unsqueeze(1))
    batch = {
        "history": torch.tensor([[3, 4, 0], [7, 0, 0]]),
        "item": torch.tensor([5, 6, 2]),
        "request": torch.tensor([0, 0, 1]),
    }
    # request 0's candidates see behaviours 3 and 4; padding contributes nothing
    assert cross(batch).tolist() == [35 + 45, 36 + 46, 72]
    hashed = WideCross("history", "item", 10, 10, hash_buckets=7)
    assert hashed.hashed and hashed.weight.num_embeddings == 7


@pytest.mark.parametrize("ranker_type", ["din", "wide_deep"])
def test_neural_rankers_train_bit_identically_run_to_run_on_several_threads(items, ranker_type):
    """Same seed, same data: the same weights, to the bit, however many threads sum the gradients (the
    per-candidate gathers use index_select, whose backward sums in a fixed order; indexing's does not)."""
    rng = np.random.default_rng(9)
    train = synthetic_batch(rng, 100, 40, 8, items)
    config = RankingConfig(model={"type": ranker_type, "epochs": 2, "batch_size": 256})
    states = []
    before = torch.get_num_threads()
    try:
        for threads in (2, 2, 1):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            ranker = create_ranker(config, StubSchema(), items)
            ranker.fit(train, planted_labels(train, items), seed=0, progress=False)
            states.append(ranker.model.state_dict())
    finally:
        torch.set_num_threads(before)
    for other in states[1:]:
        for name, tensor in states[0].items():
            assert torch.equal(tensor, other[name]), name


def _id_tables(ranker) -> dict[str, torch.Tensor]:
    model = ranker.model
    if ranker.type == "din":
        return {"item": model.item_embedding.weight, "user": model.user_embeddings["user"].weight}
    return {"item": model.embeddings["item"].weight, "user": model.embeddings["user"].weight}


@pytest.mark.parametrize("ranker_type", ["din", "wide_deep"])
def test_a_neural_ranker_trains_its_id_tables_lazily(items, ranker_type):
    """The user and item tables train with lazy Adam: whatever the weight decay, a row no training example
    holds (as a user, a candidate or a behaviour) keeps its initial value exactly, so a step costs the
    batch, not the catalogue. Dense Adam with weight decay would shrink every row at every step."""
    rng = np.random.default_rng(3)
    batch = synthetic_batch(rng, 60, 20, 8, items)
    # the examples hold only items 1..29 and users 1..14
    item = (batch.item - 1) % 29 + 1
    history = np.where(batch.history > 0, (batch.history - 1) % 29 + 1, 0)
    batch = dataclasses.replace(
        batch, user=(batch.user - 1) % 14 + 1, item=item, history=history, genres=items.genres[item]
    )
    neural = {"epochs": 2, "batch_size": 128, "learning_rate": 5e-3, "weight_decay": 0.1}
    model = DINConfig(**neural) if ranker_type == "din" else WideDeepConfig(**neural)
    ranker = create_ranker(RankingConfig(model=model), StubSchema(), items)
    assert ranker.model.sparse_parameters()
    before = {name: table.detach().clone() for name, table in _id_tables(ranker).items()}
    ranker.fit(batch, planted_labels(batch, items), seed=0, progress=False)
    after = _id_tables(ranker)
    seen = {"item": 30, "user": 15}  # rows below these appear in the examples
    for name, first_unseen in seen.items():
        assert torch.equal(after[name][first_unseen:], before[name][first_unseen:]), name
        assert not torch.equal(after[name][1:first_unseen], before[name][1:first_unseen]), name
    # dense gradients are the other choice, for a backend without sparse all-reduce
    dense = type(ranker.model)(ranker.model.spec, sparse_ids=False)
    assert dense.sparse_parameters() == []
    assert not any(isinstance(m, torch.nn.Embedding) and m.sparse for m in dense.modules())
