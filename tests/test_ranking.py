"""Ranking: features, the three rankers, DIN's split attention against its straightforward form."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cascade.core.metrics import auc, gauc
from cascade.core.schema import RECALL_CHANNELS, FeatureSchema
from cascade.ranking.config import DINConfig, LightGBMConfig, RankingConfig, WideDeepConfig
from cascade.ranking.din import DIN, Dice
from cascade.ranking.din_serving import DINServing, activation_form
from cascade.ranking.features import (
    DENSE_FEATURES,
    RankingBatch,
    UserRow,
    encode_channels,
)
from cascade.ranking.ranker import dense_features_of
from cascade.ranking.registry import RANKERS, create_ranker, load_ranker
from cascade.ranking.statistics import ItemStatistics
from cascade.ranking.torch_ranker import DINRanker
from cascade.ranking.wide_deep import WideCross

NUM_ITEMS, NUM_GENRES, MAX_GENRES = 60, 6, 3


class _Schema:
    """The cardinalities a ranker reads from a FeatureSchema, for synthetic batches."""

    def cardinality(self, name: str) -> int:
        return {
            "user": 30,
            "item": NUM_ITEMS,
            "gender": 3,
            "age": 8,
            "occupation": 5,
            "zip": 4,
            "genre": NUM_GENRES,
            "year": 10,
        }[name]


class _Items:
    def __init__(self, rng):
        self.genres = np.zeros((NUM_ITEMS, MAX_GENRES), dtype=np.int64)
        self.genres[1:, 0] = rng.integers(1, NUM_GENRES, NUM_ITEMS - 1)
        self.genres[1::2, 1] = rng.integers(1, NUM_GENRES, NUM_ITEMS // 2)
        self.year = rng.integers(1, 10, NUM_ITEMS)


# the dense columns rankers built from a default RankingConfig take
DENSE_WIDTH = len(dense_features_of(RankingConfig()))


def synthetic_batch(rng, requests: int, candidates: int, history: int, items: _Items) -> RankingBatch:
    """Requests with random users, histories (some padded) and candidates."""
    hist = rng.integers(1, NUM_ITEMS, (requests, history))
    for r in range(requests):
        hist[r, rng.integers(history // 2, history + 1) :] = 0
    cand = rng.integers(1, NUM_ITEMS, requests * candidates)
    return RankingBatch(
        user=rng.integers(1, 30, requests),
        gender=rng.integers(0, 3, requests),
        age=rng.integers(0, 8, requests),
        occupation=rng.integers(0, 5, requests),
        zip=rng.integers(0, 4, requests),
        history=hist,
        request=np.repeat(np.arange(requests), candidates),
        item=cand,
        genres=items.genres[cand],
        year=items.year[cand],
        channel=rng.integers(1, len(RECALL_CHANNELS) + 1, requests * candidates),
        dense=rng.normal(size=(requests * candidates, DENSE_WIDTH)).astype(np.float32),
    )


def planted_labels(batch: RankingBatch, items: _Items) -> np.ndarray:
    """Positive when two engineered features are jointly high: a signal every ranker can see."""
    return (batch.dense[:, 0] + 0.5 * batch.dense[:, 1] > 1.0).astype(np.float32)


@pytest.fixture
def items():
    return _Items(np.random.default_rng(0))


def _din(config: RankingConfig, items: _Items) -> DIN:
    ranker = DINRanker.create(config, _Schema(), items)
    return ranker.model


def _trained_din(config: RankingConfig, items: _Items, rng: np.random.Generator, steps: int) -> DIN:
    """A DIN after a few training steps, so that Dice's running statistics and every weight are
    non-trivial; in eval mode."""
    model = _din(config, items)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train = synthetic_batch(rng, 6, 40, 12, items)
    for _ in range(steps):
        loss = model(train.tensors()).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _din_config(**model) -> RankingConfig:
    return RankingConfig(model=DINConfig(**model))


@pytest.mark.parametrize("attention_hidden", [(36,), (64, 16)])
@pytest.mark.parametrize("activation_name", ["prelu", "dice"])
def test_din_split_attention_equals_the_straightforward_form(items, attention_hidden, activation_name):
    """DIN.forward, the form that trains and scores offline batches, against the concatenated reference,
    for one request and several, and with gradients reaching the attention's weights."""
    torch.manual_seed(0)
    config = _din_config(
        attention_hidden=attention_hidden, attention_activation=activation_name, activation=activation_name
    )
    rng = np.random.default_rng(1)
    model = _trained_din(config, items, rng, steps=3)
    with torch.inference_mode():
        for requests in (1, 5):
            batch = synthetic_batch(rng, requests, 50, 20, items).tensors()
            fast, slow = model(batch), model.reference_forward(batch)
            assert fast.shape == (requests * 50,)
            torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    batch = synthetic_batch(rng, 2, 50, 20, items).tensors()
    fast = model(batch)
    torch.testing.assert_close(fast, model.reference_forward(batch), atol=1e-5, rtol=1e-5)
    fast.sum().backward()
    assert model.attention.linears[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("attention_hidden", [(36,), (64, 16)])
@pytest.mark.parametrize(("attention_activation", "activation"), [("prelu", "dice"), ("dice", "prelu")])
def test_din_serving_form_equals_the_straightforward_form(
    items, attention_hidden, attention_activation, activation
):
    """DINServing (weights folded at build, numpy around torch's products; the PReLU fold with one
    attention layer, the batched layers otherwise) against the concatenated reference, on padded histories;
    in bfloat16 it stays close to float32. It takes one request, and float32 or bfloat16 only."""
    torch.manual_seed(0)
    config = _din_config(
        attention_hidden=attention_hidden, attention_activation=attention_activation, activation=activation
    )
    rng = np.random.default_rng(11)
    model = _trained_din(config, items, rng, steps=3)
    served = DINServing.build(model, "float32")
    for _ in range(3):
        batch = synthetic_batch(rng, 1, 50, 20, items)
        with torch.inference_mode():
            expected = model.reference_forward(batch.tensors()).numpy()
        logits = served(batch)
        assert logits.shape == (50,) and logits.dtype == np.float32
        np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)
    approx = DINServing.build(model, "bfloat16")(batch)
    assert not np.array_equal(approx, logits)  # the bf16 products did run
    np.testing.assert_allclose(approx, logits, atol=3e-2)
    with pytest.raises(ValueError, match="one request"):
        served(synthetic_batch(rng, 2, 5, 20, items))
    with pytest.raises(ValueError, match="precision"):
        DINServing.build(model, "float16")


def test_din_bfloat16_serving_form_keeps_the_float32_top_items(items):
    """The serving option ``ranker_precision = "bfloat16"`` at a served request's size: approximate, so
    checked against float32."""
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    model = _trained_din(_din_config(), items, rng, steps=5)
    batch = synthetic_batch(rng, 1, 500, 50, items)
    exact = torch.sigmoid(torch.from_numpy(DINServing.build(model, "float32")(batch)))
    approx = torch.sigmoid(torch.from_numpy(DINServing.build(model, "bfloat16")(batch)))
    assert not torch.equal(approx, exact)
    assert (approx - exact).abs().max() < 5e-3
    top_exact = set(torch.topk(exact, 20).indices.tolist())
    top_approx = set(torch.topk(approx, 20).indices.tolist())
    assert len(top_exact & top_approx) >= 18


def test_din_ranker_serving_form_scores_as_the_model_does(items):
    """The ranker's serving form gives the model's probabilities for one request, as its offline
    ``score`` does for any batch; a form built after new weights are loaded scores with those."""
    torch.manual_seed(0)
    config = _din_config()
    rng = np.random.default_rng(12)
    ranker = DINRanker(_trained_din(config, items, rng, steps=2), config)
    serve = ranker.serving_form("float32")
    batch = synthetic_batch(rng, 1, 40, 20, items)
    with torch.inference_mode():
        expected = torch.sigmoid(ranker.model.reference_forward(batch.tensors())).numpy()
    np.testing.assert_allclose(serve(batch), expected, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(ranker.score(batch), expected, atol=1e-6, rtol=1e-5)
    several = synthetic_batch(rng, 3, 40, 20, items)
    with torch.inference_mode():
        expected_several = torch.sigmoid(ranker.model.reference_forward(several.tensors())).numpy()
    np.testing.assert_allclose(ranker.score(several), expected_several, atol=1e-6, rtol=1e-5)
    other = _trained_din(config, items, np.random.default_rng(14), steps=4)
    ranker.model.load_state_dict(other.state_dict())
    with torch.inference_mode():
        expected = torch.sigmoid(other.reference_forward(batch.tensors())).numpy()
    np.testing.assert_allclose(ranker.serving_form("float32")(batch), expected, atol=1e-6, rtol=1e-5)


def test_dice_is_the_papers_formula_in_training_and_serving_forms():
    """Dice in eval mode and its serving form (four in-place passes from per-unit terms) against
    f(x) = p x + (1 - p) alpha x, p = sigmoid((x - E) / sd), on the last axis and on axis 1."""
    torch.manual_seed(0)
    dice = Dice(12)
    dice.running_mean.normal_()
    dice.running_var.uniform_(0.5, 2.0)
    dice.slope.data.uniform_(-0.5, 0.5)
    dice.eval()
    for x, axis, shape in ((torch.randn(7, 12), 1, (1, 12)), (torch.randn(3, 12, 5), 1, (1, 12, 1))):
        mean, var = dice.running_mean.view(shape), dice.running_var.view(shape)
        p = torch.sigmoid((x - mean) / torch.sqrt(var + dice.eps))
        expected = p * x + (1 - p) * dice.slope.detach().view(shape) * x
        torch.testing.assert_close(dice(x, axis=axis), expected, atol=1e-6, rtol=1e-5)
        with torch.inference_mode():
            torch.testing.assert_close(activation_form(dice, axis)(x.clone()), expected, atol=1e-6, rtol=1e-5)


def test_din_attention_ignores_padding_and_weights_are_not_normalised(items):
    torch.manual_seed(0)
    model = _din(_din_config(), items).eval()
    rng = np.random.default_rng(2)
    batch = synthetic_batch(rng, 1, 8, 10, items)
    short = batch.history.copy()
    short[0, 5:] = 0
    padded_other = short.copy()
    padded_other[0, 5:] = 0
    with torch.inference_mode():
        a = model(RankingBatch(**{**batch.__dict__, "history": short}).tensors())
        # padding positions hold 0 whatever the history length they pad to
        longer = np.zeros((1, 20), dtype=np.int64)
        longer[0, :10] = short[0]
        b = model(RankingBatch(**{**batch.__dict__, "history": longer}).tensors())
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    behaviours = model.item_vectors(torch.from_numpy(short))
    weights = model.attention(
        behaviours, model.item_vectors(torch.from_numpy(batch.item)), torch.zeros(8, dtype=torch.int64)
    )
    assert not torch.allclose(weights.sum(1), torch.ones(8))  # intensities, not a softmax


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


def test_batch_take_and_concat_keep_each_candidate_with_its_request(items):
    rng = np.random.default_rng(3)
    a, b = synthetic_batch(rng, 3, 4, 5, items), synthetic_batch(rng, 2, 4, 5, items)
    both = RankingBatch.concat([a, b])
    assert both.num_requests == 5 and len(both) == 20
    np.testing.assert_array_equal(both.history[both.request[12:]], b.history[b.request])
    picked = both.take(np.array([13, 2, 19]))
    assert picked.num_requests == 3
    np.testing.assert_array_equal(picked.item, both.item[[13, 2, 19]])
    np.testing.assert_array_equal(picked.user[picked.request], both.user[both.request[[13, 2, 19]]])
    np.testing.assert_array_equal(picked.group_sizes(), [1, 1, 1])


def test_history_features_equal_their_definitions():
    from cascade.ranking.features import COOCCURRENCE_DECAY, RankingFeatureBuilder
    from cascade.recall.channels import CooccurrenceRules

    rng = np.random.default_rng(8)
    users = pd.DataFrame({"user_id": [1], "gender": "F", "age": 30, "occupation": "x", "zip_code": "1"})
    catalogue = pd.DataFrame(
        {"item_id": np.arange(1, 41), "title": "t (1990)", "genres": "Drama", "year": 1990}
    )
    schema = FeatureSchema.fit(users, catalogue, max_genres=2, title_length=4, zip_prefix_length=1)
    frame = pd.DataFrame(
        {
            "user_id": np.sort(rng.integers(1, 30, 2000)),
            "item_id": rng.integers(1, 41, 2000),
            "rating": 4.0,
            "timestamp": np.arange(2000) + 1_000_000,
        }
    )
    item = schema.item_index(frame.item_id.to_numpy())
    rules = CooccurrenceRules.mine(
        frame.user_id.to_numpy(),
        item,
        schema.num_items,
        window=2,
        min_support=2,
        min_confidence=0.0,
        neighbours=8,
    )
    vectors = rng.normal(size=(schema.num_items - 1, 6)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    stats = ItemStatistics.from_interactions(schema, frame, positive_min_rating=4, recent_window_days=7)
    builder = RankingFeatureBuilder(schema, schema.item_table(catalogue), stats, 12, vectors, rules)
    history = rng.permutation(np.arange(1, schema.num_items))[:15]  # longer than the 12 the models see
    candidates = np.array([3, 9, 27, 14, 40])
    batch = builder.build(
        UserRow(1, 1, 1, 1), history, candidates, np.ones(5, np.float32), np.ones(5, np.int64)
    )
    dense = {name: batch.dense[:, i] for i, name in enumerate(DENSE_FEATURES)}
    seen = history[:12]
    np.testing.assert_array_equal(batch.history[0], seen)
    for c, candidate in enumerate(candidates.tolist()):
        cos = [float(vectors[candidate - 1] @ vectors[h - 1]) for h in seen]
        conf = [dict(zip(*rules.rules_of(h)[:2])).get(candidate, 0.0) for h in seen]
        supp = [dict(zip(rules.rules_of(h)[0], rules.rules_of(h)[2])).get(candidate, 0) for h in seen]
        expected = {
            "similarity_to_latest": cos[0],
            "max_similarity_latest_10": max(cos[:10]),
            "mean_similarity_latest_5": np.mean(cos[:5]),
            "mean_similarity_history": np.mean(cos),
            "cooccurrence_latest_10": sum(conf[:10]),
            "cooccurrence_history": sum(conf),
            "cooccurrence_decayed": sum(v * COOCCURRENCE_DECAY**j for j, v in enumerate(conf)),
            "cooccurrence_max": max(conf),
            "cooccurrence_log_support_latest_10": sum(np.log1p(supp[:10])),
        }
        for name, value in expected.items():
            assert dense[name][c] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert dense["cooccurrence_history"].any()  # the case is not vacuous
    # serving hands over the vectors it gathered for the recall scores: the same features
    given = builder.build(
        UserRow(1, 1, 1, 1),
        history,
        candidates,
        np.ones(5, np.float32),
        np.ones(5, np.int64),
        None,
        vectors[candidates - 1],
    )
    np.testing.assert_array_equal(given.dense, batch.dense)
    # a user without a history gets zeros, not an error
    cold = builder.build(
        UserRow(1, 1, 1, 1), np.zeros(0, np.int64), candidates, np.ones(5, np.float32), np.ones(5, np.int64)
    )
    assert not cold.dense[:, DENSE_FEATURES.index("similarity_to_latest") :].any()


def test_channel_codes():
    np.testing.assert_array_equal(encode_channels(np.array(["two_tower", "cooccurrence", "?"])), [1, 2, 0])


def test_item_statistics_count_only_events_up_to_the_time_asked(tmp_path):
    rng = np.random.default_rng(4)
    day = 86_400
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(1, 20, 400),
            "item_id": rng.integers(1, 15, 400),
            "rating": rng.integers(1, 6, 400).astype(float),
            "timestamp": 1_000_000 + rng.integers(0, 30 * day, 400),
        }
    )
    schema = FeatureSchema.fit(
        pd.DataFrame(
            {"user_id": np.arange(1, 20), "gender": "M", "age": 25, "occupation": "x", "zip_code": "1"}
        ),
        pd.DataFrame({"item_id": np.arange(1, 15), "title": "t (1990)", "genres": "Drama", "year": 1990}),
        max_genres=2,
        title_length=4,
        zip_prefix_length=1,
    )
    stats = ItemStatistics.from_interactions(schema, frame, positive_min_rating=4, recent_window_days=7)
    items = schema.item_index(np.arange(1, 15))
    end = float(frame.timestamp.max())  # the time every served request is clamped to: a cached answer
    for at in (1_000_000 - 5, 1_000_000 + 10 * day + 123, end, 1_000_000 + 40 * day):
        ids = schema.item_id_of(items)
        expected = [((frame.item_id == i) & (frame.timestamp <= at)).sum() for i in ids]
        recent = [
            ((frame.item_id == i) & (frame.timestamp <= at) & (frame.timestamp > at - 7 * day)).sum()
            for i in ids
        ]
        np.testing.assert_array_equal(stats.counts_before(items, at), expected)
        np.testing.assert_array_equal(stats.recent_counts(items, at), recent)
    assert stats.clamp_time(None) == frame.timestamp.max()
    assert stats.clamp_time(frame.timestamp.max() + 99) == frame.timestamp.max()
    stats.save(tmp_path / "s.npz")
    again = ItemStatistics.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(again.event_keys, stats.event_keys)
    assert again.end == stats.end and again.recent_window_days == 7


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
    ranker = create_ranker(config, _Schema(), items)
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


@pytest.mark.parametrize("kind", ["pmf", "hybrid", "autorec"])
def test_rating_models_recover_low_rank_ratings_better_than_the_mean(kind):
    from cascade.ranking.rating import (
        PMF,
        HybridRatingModel,
        ImplicitFeedback,
        ItemAutoRec,
        RatingData,
        RatingTrainSettings,
        predict,
        rmse,
        train_rating_model,
    )

    rng = np.random.default_rng(6)
    users, items_count = 80, 60
    u, v = rng.normal(size=(users, 3)), rng.normal(size=(items_count, 3))
    pairs = rng.choice(users * items_count, 3000, replace=False)
    rows, cols = pairs // items_count, pairs % items_count
    ratings = np.clip(3.5 + (u[rows] * v[cols]).sum(1) * 0.6 + rng.normal(0, 0.2, 3000), 1, 5)
    data = RatingData(rows + 1, cols + 1, ratings.astype(np.float32))
    train, val, test = (
        data.take(np.arange(2400)),
        data.take(np.arange(2400, 2700)),
        data.take(np.arange(2700, 3000)),
    )
    side = {"gender": rng.integers(0, 3, users + 1)}
    mean = float(train.ratings.mean())
    settings = RatingTrainSettings(l2=0.01, epochs=40, batch_size=256, learning_rate=1e-2)
    if kind == "pmf":
        model = PMF(users + 1, items_count + 1, 8, mean)
    elif kind == "autorec":
        model = ItemAutoRec(users + 1, items_count + 1, train, hidden=64)
        settings = RatingTrainSettings(l2=0.01, epochs=300, batch_size=4, learning_rate=3e-3, patience=20)
    else:
        genres = rng.integers(0, 4, (items_count + 1, 2))
        model = HybridRatingModel(
            users + 1, items_count + 1, 8, mean, {"gender": 3}, genres, np.zeros(items_count + 1), 4, 1
        )
    feedback = ImplicitFeedback(train, users + 1)
    model, metrics = train_rating_model(
        model,
        train,
        val,
        side,
        feedback,
        settings,
        0,
    )
    error = rmse(predict(model, test, side, feedback), test.ratings)
    assert error < 0.6 * rmse(np.full(300, mean), test.ratings)
    assert metrics["validation_rmse"] < 0.6 * rmse(np.full(300, mean), val.ratings)


def test_item_autorec_densifies_exactly_the_known_ratings_of_each_item():
    from cascade.ranking.rating import ItemAutoRec, RatingData

    known = RatingData(
        np.array([3, 1, 2, 1]), np.array([2, 0, 2, 3]), np.array([5.0, 4.0, 1.0, 2.0], np.float32)
    )
    model = ItemAutoRec(num_users=5, num_items=4, known=known, hidden=3)
    ratings, mask = model.item_columns(np.array([2, 1, 3, 0]))
    expected = np.zeros((4, 5), np.float32)
    expected[0, 3], expected[0, 2], expected[2, 1], expected[3, 1] = 5.0, 1.0, 2.0, 4.0
    np.testing.assert_array_equal(ratings.numpy(), expected)
    np.testing.assert_array_equal(mask.numpy(), expected > 0)
    # a prediction reads the reconstruction of the item's column at the user
    predictions, _ = model(torch.tensor([3, 0]), torch.tensor([2, 2]))
    reconstruction = model.reconstruct(ratings[:1])[0]
    np.testing.assert_allclose(
        predictions.detach().numpy(), reconstruction[[3, 0]].detach().numpy(), rtol=1e-6
    )


def test_rating_blend_recovers_the_stacking_weights_and_beats_each_member():
    from cascade.ranking.rating import RatingBlend, rmse

    rng = np.random.default_rng(3)
    truth = rng.uniform(1.5, 4.5, 4000)
    # two models that shrink towards the mean and carry independent errors
    a = 3.0 + 0.6 * (truth - 3.0) + rng.normal(0, 0.3, 4000)
    b = 3.0 + 0.6 * (truth - 3.0) + rng.normal(0, 0.3, 4000)
    fit, held = slice(0, 3000), slice(3000, None)
    blend = RatingBlend.fit({"a": a[fit], "b": b[fit]}, truth[fit])
    assert blend.names == ("a", "b")
    blended = blend.predict({"a": a[held], "b": b[held]})
    assert rmse(blended, truth[held]) < 0.9 * min(rmse(a[held], truth[held]), rmse(b[held], truth[held]))
    # the weights sum above 1 to undo the shrinkage, which a convex mix could not
    assert sum(blend.weights) > 1.1


def _tiny_catalogue(rng: np.random.Generator, users: int, items: int):
    """A FeatureSchema over ``users`` users and ``items`` items, with their encoded tables."""
    from cascade.core.schema import FeatureSchema

    people = pd.DataFrame(
        {
            "user_id": np.arange(1, users + 1),
            "gender": rng.choice(["F", "M"], users),
            "age": rng.integers(18, 60, users),
            "occupation": rng.choice(["x", "y", "z"], users),
            "zip_code": rng.choice(["1", "2"], users),
        }
    )
    catalogue = pd.DataFrame(
        {
            "item_id": np.arange(1, items + 1),
            "title": "t (1990)",
            "genres": rng.choice(["Drama", "Comedy", "Drama|Comedy"], items),
            "year": rng.integers(1980, 1999, items),
        }
    )
    schema = FeatureSchema.fit(people, catalogue, max_genres=2, title_length=4, zip_prefix_length=1)
    return schema, schema.user_table(people), schema.item_table(catalogue)


def test_rating_features_predict_what_each_rating_model_predicts(tmp_path):
    """The reduced forms serving uses (PMF factors, the hybrid with the request's history as N(u),
    I-AutoRec's precomputed item codes) give the models' own predictions, and survive save / load."""
    from cascade.ranking.rating import USER_SIDE, ImplicitFeedback, RatingData, build_rating_model, predict
    from cascade.ranking.rating_features import RatingFeatureModels

    rng = np.random.default_rng(12)
    schema, users, items = _tiny_catalogue(rng, 25, 700)  # > one 512-item chunk of AutoRec codes
    known = RatingData(
        rng.integers(1, 26, 3000), rng.integers(1, 701, 3000), rng.integers(1, 6, 3000).astype(np.float32)
    )
    models = {kind: build_rating_model(kind, schema, items, known) for kind in ("pmf", "hybrid", "autorec")}
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial weights everywhere, biases included, inside the rating scale
        for model in models.values():
            for parameter in model.parameters():
                parameter.normal_(0.0, 0.1)
        models["autorec"].decoder.bias.normal_(3.0, 0.5)
    rated = np.ones(schema.num_users, dtype=bool)
    rated[[0, 3]] = False  # row 0, every user unknown to the schema, and a known user without ratings
    features = RatingFeatureModels.of_models(models, rated)
    assert features.kinds == ("pmf", "hybrid", "autorec")
    side = {name: getattr(users, name) for name in USER_SIDE}
    user = 7
    row = UserRow(user, *(int(getattr(users, n)[user]) for n in USER_SIDE))
    history = np.array([5, 640, 33, 5, 120])
    candidates = np.array([1, 2, 699, 512, 513, 40, 640])
    got = features.predict(row, history, candidates)
    assert got.shape == (7, 3) and got.dtype == np.float32
    query = RatingData(np.full(7, user), candidates, np.zeros(7, np.float32))
    as_rated = ImplicitFeedback(
        RatingData(np.full(5, user), history, np.ones(5, np.float32)), schema.num_users
    )
    for column, (kind, model) in enumerate(models.items()):
        expected = predict(model, query, side, as_rated)
        np.testing.assert_allclose(got[:, column], expected, rtol=1e-5, atol=1e-5, err_msg=kind)
    assert ((got > 1) & (got < 5)).mean(
        axis=0
    ).min() > 0.5  # mostly unclamped: the comparison means something
    features.save(tmp_path)
    again = RatingFeatureModels.load(tmp_path, schema, items)
    np.testing.assert_array_equal(again.predict(row, history, candidates), got)
    # a user with no history yet: the hybrid's implicit term is empty, not an error
    assert np.isfinite(features.predict(row, np.zeros(0, np.int64), candidates)).all()
    with pytest.raises(ValueError, match="names a"):
        RatingFeatureModels.of_models({"pmf": models["autorec"]}, rated)
    # users the models never fitted get the mean from PMF and I-AutoRec, the same for every candidate
    for unfitted in (0, 3):
        stranger = UserRow(unfitted, *(int(getattr(users, n)[unfitted]) for n in USER_SIDE))
        plain = features.predict(stranger, np.zeros(0, np.int64), candidates)
        np.testing.assert_allclose(plain[:, 0], models["pmf"].mean, rtol=1e-6)
        np.testing.assert_allclose(plain[:, 2], known.ratings.mean(), rtol=1e-5)
        assert len(np.unique(plain[:, 1])) > 1  # the hybrid still reads the item and the demographics


def test_lightgbm_keeps_the_objective_and_rounds_that_cross_validate_best(items):
    rng = np.random.default_rng(9)
    train = synthetic_batch(rng, 60, 30, 8, items)
    val = synthetic_batch(rng, 12, 30, 8, items)
    config = RankingConfig(model=LightGBMConfig(rounds=25, cv_folds=3))
    ranker = create_ranker(config, _Schema(), items)
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
    np.testing.assert_allclose(ranker._raw(val), mean, rtol=1e-6)
    assert metrics["cv_ndcg@10"] == pytest.approx(float(cv.curves[objective].max()))
    assert metrics["validation_auc"] > 0.75  # out-of-fold: no candidate scored by a model that saw it
    assert ranker.platt[0] > 0  # calibration keeps the order


def test_als_fold_in_is_the_exact_least_squares_user_factor(tmp_path):
    """The user factor folded in from a history against the dense weighted least-squares problem it
    solves: min_x sum_i c_i (p_i - x . y_i)^2 + lambda |x|^2 over every item, c_i = alpha and p_i = 1 on
    the history's distinct items (implicit's convention), c_i = 1 and p_i = 0 elsewhere. Scores rank the
    candidates, ties share a rank, an empty history scores everything 0, and the factors survive a save /
    load."""
    from cascade.ranking.als_features import ALSFeatures

    rng = np.random.default_rng(3)
    factors = rng.normal(size=(40, 6)).astype(np.float32)
    factors[0] = 0.0
    features = ALSFeatures(factors, regularization=0.3, alpha=7.0)
    history = np.array([5, 9, 5, 17, 0, 33])  # a repeat and a padding slot, latest first
    confidence = np.ones(40)
    preference = np.zeros(40)
    confidence[[5, 9, 17, 33]] = 7.0
    preference[[5, 9, 17, 33]] = 1.0
    y = factors.astype(np.float64)
    exact = np.linalg.solve(
        y.T @ (confidence[:, None] * y) + 0.3 * np.eye(6), y.T @ (confidence * preference)
    )
    np.testing.assert_allclose(features.user_factor(history), exact, rtol=1e-4, atol=1e-5)

    candidates = np.array([3, 9, 3, 21, 12])
    columns = features.predict(UserRow(1, 0, 0, 0, 0), history, candidates)
    assert columns.shape == (5, 2) and columns.dtype == np.float32
    np.testing.assert_allclose(columns[:, 0], factors[candidates] @ exact, rtol=1e-4, atol=1e-5)
    above = np.array([(columns[:, 0] > s).sum() for s in columns[:, 0]])
    np.testing.assert_array_equal(columns[:, 1], np.log1p(above).astype(np.float32))
    assert columns[0, 1] == columns[2, 1]  # the same item twice: one rank
    nothing = features.predict(UserRow(0, 0, 0, 0, 0), np.zeros(0, dtype=np.int64), candidates)
    assert not nothing.any()

    features.save(tmp_path)
    again = ALSFeatures.load(tmp_path)
    np.testing.assert_array_equal(again.predict(UserRow(1, 0, 0, 0, 0), history, candidates), columns)
