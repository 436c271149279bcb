"""Rating models, their blend and the rating and ALS features built from them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cascade.core.schema import FeatureSchema
from cascade.ranking.features import (
    UserRow,
)


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
    # predictions keep to the data set's scale: a half-star scale's 0.5 is not clipped to 1
    low = {"a": np.array([0.4, 0.6]), "b": np.array([0.4, 0.6])}
    identity = RatingBlend(("a", "b"), 0.0, (0.5, 0.5), (0.5, 5.0))
    assert identity.predict(low).tolist() == [0.5, 0.6]
    assert RatingBlend(("a", "b"), 0.0, (0.5, 0.5)).predict(low).tolist() == [1.0, 1.0]


def _tiny_catalogue(rng: np.random.Generator, users: int, items: int):
    """A FeatureSchema over ``users`` users and ``items`` items, with their encoded tables."""

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
