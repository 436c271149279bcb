"""Explicit rating prediction, the domain paper's experiment: a hybrid model against PMF.

``HybridRatingModel``: r(u, i) = mu + b_u + b_i + q_i . (p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j) + f(side),
the SVD++ form (N(u): the items u rated in the training part, which carries who-rated-what without the
ratings) plus an MLP over the user's demographics and the item's genres and year, which is what a new
user or item falls back on.
``PMF`` (Salakhutdinov & Mnih): r(u, i) = mu + p_u . q_i with Gaussian priors, i.e. L2 on the factors.
``ItemAutoRec`` (Sedhain et al., 2015): each item's column of known ratings is encoded and decoded
back, a non-linear model that errs differently from the factor models.
All are trained the same way: Adam on squared error plus L2, early stopping on a validation part of the
training ratings. ``RatingBlend`` stacks their predictions with least-squares weights fitted on that
validation part.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cascade.core.schema import DEFAULT_RATING_RANGE, FeatureSchema, ItemFeatures
from cascade.core.sparse import csr_row_entries

USER_SIDE = ("gender", "age", "occupation", "zip")
RATING_FACTORS = 32
AUTOREC_HIDDEN = 500


@dataclass(frozen=True)
class RatingData:
    """Encoded ratings: users, items (N,) int64 indices; ratings (N,) float32; rating_range: the data set's
    (lowest, highest) rating, which predictions are clipped to."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    rating_range: tuple[float, float] = DEFAULT_RATING_RANGE

    def take(self, rows: np.ndarray) -> RatingData:
        return RatingData(self.users[rows], self.items[rows], self.ratings[rows], self.rating_range)

    @classmethod
    def of_interactions(cls, schema: FeatureSchema, interactions: pd.DataFrame) -> RatingData:
        """The ratings of ``interactions`` (user_id, item_id, rating columns), encoded by ``schema``."""
        return cls(
            schema.user_index(interactions["user_id"].to_numpy()),
            schema.item_index(interactions["item_id"].to_numpy()),
            interactions["rating"].to_numpy(dtype=np.float32),
            schema.rating_range,
        )


class ImplicitFeedback:
    """N(u) as CSR arrays for an EmbeddingBag: the items each user rated in the training ratings."""

    def __init__(self, data: RatingData, num_users: int):
        order = np.argsort(data.users, kind="stable")
        self.items = torch.from_numpy(data.items[order].astype(np.int64))
        counts = np.bincount(data.users, minlength=num_users)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.counts = counts

    def bags(self, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(items, offsets, per-item weights |N(u)|^-1/2) of the given users, for EmbeddingBag."""
        counts = self.counts[users]
        _, index = csr_row_entries(self.offsets, users)
        items = self.items[torch.from_numpy(index)]
        offsets = torch.from_numpy((np.cumsum(counts) - counts).astype(np.int64))
        weights = torch.from_numpy(np.repeat(1.0 / np.sqrt(np.maximum(counts, 1)), counts).astype(np.float32))
        return items, offsets, weights


class PMF(nn.Module):
    def __init__(self, num_users: int, num_items: int, factors: int, mean: float):
        super().__init__()
        self.mean = mean
        self.user_factors = nn.Embedding(num_users, factors)
        self.item_factors = nn.Embedding(num_items, factors)
        for table in (self.user_factors, self.item_factors):
            nn.init.normal_(table.weight, std=0.05)

    def forward(self, users: torch.Tensor, items: torch.Tensor, **_) -> tuple[torch.Tensor, torch.Tensor]:
        """-> predictions (B,), L2 penalty of the touched rows (scalar)."""
        p, q = self.user_factors(users), self.item_factors(items)
        return self.mean + (p * q).sum(-1), (p.square().sum() + q.square().sum()) / len(users)


class HybridRatingModel(nn.Module):
    def __init__(
        self,
        num_users: int,
        num_items: int,
        factors: int,
        mean: float,
        side_cardinalities: dict[str, int],
        item_genres: np.ndarray,
        item_year: np.ndarray,
        num_genres: int,
        num_years: int,
        side_dim: int = 8,
        hidden: int = 64,
    ):
        super().__init__()
        self.mean = mean
        self.user_bias = nn.Embedding(num_users, 1)
        self.item_bias = nn.Embedding(num_items, 1)
        self.user_factors = nn.Embedding(num_users, factors)
        self.item_factors = nn.Embedding(num_items, factors)
        self.implicit = nn.EmbeddingBag(num_items, factors, mode="sum")
        for table in (self.user_bias, self.item_bias):
            nn.init.zeros_(table.weight)
        for table in (self.user_factors, self.item_factors, self.implicit):
            nn.init.normal_(table.weight, std=0.05)
        self.side = nn.ModuleDict({n: nn.Embedding(c, side_dim) for n, c in side_cardinalities.items()})
        self.genre = nn.Embedding(num_genres, side_dim, padding_idx=0)
        self.year = nn.Embedding(num_years, side_dim)
        self.register_buffer("item_genres", torch.from_numpy(item_genres.astype(np.int64)))
        self.register_buffer("item_year", torch.from_numpy(item_year.astype(np.int64)))
        self.mlp = nn.Sequential(
            nn.Linear((len(side_cardinalities) + 2) * side_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        side: dict[str, torch.Tensor],
        bags: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        bag_of: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """users, items (B,); side: name -> (B,); bags: N(u) of the batch's unique users; bag_of (B,):
        each row's unique user -> predictions (B,), L2 penalty of the touched rows (scalar)."""
        bag_items, offsets, weights = bags
        implicit = self.implicit(bag_items, offsets, per_sample_weights=weights)[bag_of]  # (B, K)
        p, q = self.user_factors(users), self.item_factors(items)
        bu, bi = self.user_bias(users).squeeze(-1), self.item_bias(items).squeeze(-1)
        genres = self.item_genres[items]
        mask = (genres > 0).unsqueeze(-1).to(torch.float32)
        genre = (self.genre(genres) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        x = torch.cat(
            [*(self.side[n](side[n]) for n in self.side), genre, self.year(self.item_year[items])], -1
        )
        prediction = self.mean + bu + bi + (q * (p + implicit)).sum(-1) + self.mlp(x).squeeze(-1)
        penalty = p.square().sum() + q.square().sum() + bu.square().sum() + bi.square().sum()
        return prediction, (penalty + implicit.square().sum()) / len(users)


class ItemAutoRec(nn.Module):
    """I-AutoRec: item i's known ratings r_i (U,) (zero where unknown) give h = sigmoid(V r_i + c)
    (hidden,) and the reconstruction W h + b (U,), whose entry u is the prediction for (u, i).

    The known ratings are the training ratings, held as item-major CSR buffers; each batch densifies
    only its own items' columns, so memory is (items in batch, U), never the whole (I, U) matrix.
    The loss counts observed entries only; the penalty is ||V||^2 + ||W||^2 over twice the number of
    known ratings, so that l2 weighs the weights against the mean squared error as the paper's sum does.
    """

    def __init__(self, num_users: int, num_items: int, known: RatingData, hidden: int = 500):
        super().__init__()
        self.num_users = num_users
        self.encoder = nn.Linear(num_users, hidden)
        self.decoder = nn.Linear(hidden, num_users)
        # plain arrays, not buffers: the known ratings are input, not state to copy with each best epoch
        order = np.lexsort((known.users, known.items))
        self.item_offsets = np.concatenate([[0], np.cumsum(np.bincount(known.items, minlength=num_items))])
        self.known_users = known.users[order].astype(np.int64)
        self.known_ratings = torch.from_numpy(known.ratings[order].astype(np.float32))
        self.known_count = len(known.ratings)

    @property
    def num_items(self) -> int:
        return len(self.item_offsets) - 1

    def item_columns(self, items: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """items (b,) -> known ratings (b, U) and their observed mask (b, U)."""
        row, entries = csr_row_entries(self.item_offsets, items)
        row, users = torch.from_numpy(row), torch.from_numpy(self.known_users[entries])
        ratings = torch.zeros(len(items), self.num_users)
        mask = torch.zeros(len(items), self.num_users)
        ratings[row, users] = self.known_ratings[torch.from_numpy(entries)]
        mask[row, users] = 1.0
        return ratings, mask

    def reconstruct(self, ratings: torch.Tensor) -> torch.Tensor:
        """(b, U) known ratings -> (b, U) reconstructions."""
        return self.decoder(torch.sigmoid(self.encoder(ratings)))

    def penalty(self) -> torch.Tensor:
        return (self.encoder.weight.square().sum() + self.decoder.weight.square().sum()) / (
            2 * self.known_count
        )

    def reconstruction_loss(self, items: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """items (b,) -> mean squared error over their observed entries, penalty (scalars)."""
        ratings, mask = self.item_columns(items)
        error = (self.reconstruct(ratings) - ratings).square() * mask
        return error.sum() / mask.sum().clamp(min=1.0), self.penalty()

    def forward(self, users: torch.Tensor, items: torch.Tensor, **_) -> tuple[torch.Tensor, torch.Tensor]:
        """users, items (B,) -> predictions (B,), penalty (scalar); each distinct item is decoded once."""
        unique, row = np.unique(items.numpy(), return_inverse=True)
        return self.reconstruct(self.item_columns(unique)[0])[torch.from_numpy(row), users], self.penalty()


@dataclass(frozen=True)
class RatingTrainSettings:
    l2: float
    epochs: int = 60
    batch_size: int = 1024
    learning_rate: float = 3e-3
    patience: int = 4


# Each kind's L2 grid (`evaluate rating` picks from it on a validation part) and optimiser settings; the
# settings' own l2 is what the grid picks on MovieLens-100K, which ranking's rating features train with.
RATING_MODELS: dict[str, tuple[tuple[float, ...], RatingTrainSettings]] = {
    "pmf": ((0.03, 0.1, 0.3, 1.0), RatingTrainSettings(l2=0.1)),
    "hybrid": ((0.03, 0.1, 0.3, 1.0), RatingTrainSettings(l2=0.1)),
    "autorec": (
        (30.0, 100.0, 300.0),
        RatingTrainSettings(l2=100.0, epochs=200, batch_size=64, learning_rate=1e-3, patience=10),
    ),
}


def build_rating_model(kind: str, schema: FeatureSchema, items: ItemFeatures, train: RatingData) -> nn.Module:
    """A fresh, untrained rating model of ``kind`` (a RATING_MODELS key) for ``train``'s ratings."""
    mean = float(train.ratings.mean()) if len(train.ratings) else 3.0
    if kind == "pmf":
        return PMF(schema.num_users, schema.num_items, RATING_FACTORS, mean)
    if kind == "autorec":
        return ItemAutoRec(schema.num_users, schema.num_items, train, AUTOREC_HIDDEN)
    if kind == "hybrid":
        return HybridRatingModel(
            schema.num_users,
            schema.num_items,
            RATING_FACTORS,
            mean,
            {name: schema.cardinality(name) for name in USER_SIDE},
            items.genres,
            items.year,
            schema.num_genres,
            schema.num_years,
        )
    raise ValueError(f"unknown rating model {kind!r}; known: {sorted(RATING_MODELS)}")


def _inputs(model: nn.Module, data: RatingData, side: dict[str, np.ndarray], feedback: ImplicitFeedback):
    users = torch.from_numpy(data.users.astype(np.int64))
    kwargs: dict = {"users": users, "items": torch.from_numpy(data.items.astype(np.int64))}
    if isinstance(model, HybridRatingModel):
        unique, bag_of = np.unique(data.users, return_inverse=True)
        kwargs["side"] = {n: torch.from_numpy(side[n][data.users].astype(np.int64)) for n in model.side}
        kwargs["bags"] = feedback.bags(unique)
        kwargs["bag_of"] = torch.from_numpy(bag_of.astype(np.int64))
    return kwargs


@torch.inference_mode()
def predict(
    model: nn.Module, data: RatingData, side: dict[str, np.ndarray], feedback: ImplicitFeedback
) -> np.ndarray:
    model.eval()
    low, high = data.rating_range
    return model(**_inputs(model, data, side, feedback))[0].clamp(low, high).numpy()


def rmse(predictions: np.ndarray, ratings: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predictions - ratings) ** 2)))


def train_rating_model(
    model: nn.Module,
    train: RatingData,
    validation: RatingData,
    side: dict[str, np.ndarray],
    feedback: ImplicitFeedback,
    settings: RatingTrainSettings,
    seed: int,
) -> tuple[nn.Module, dict[str, float]]:
    """Adam on squared error + l2 * penalty; keeps the epoch with the lowest validation RMSE. Batches are
    ratings, except for ItemAutoRec, whose batches are items (all of each item's known ratings)."""
    if isinstance(model, HybridRatingModel) and torch.get_num_threads() > 1:
        # EmbeddingBag's backward sums in a thread-dependent order, so on several threads two runs differ
        # (predictions by up to 0.06 on ML-100K); on one it is bit-reproducible and about as fast
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return train_rating_model(model, train, validation, side, feedback, settings, seed)
        finally:
            torch.set_num_threads(before)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    best = (float("inf"), 0, copy.deepcopy(model.state_dict()))
    targets = torch.from_numpy(train.ratings.astype(np.float32))
    autorec = isinstance(model, ItemAutoRec)
    for epoch in range(settings.epochs):
        model.train()
        order = rng.permutation(model.num_items if autorec else len(train.ratings))
        for start in range(0, len(order), settings.batch_size):
            rows = order[start : start + settings.batch_size]
            if autorec:
                error, penalty = model.reconstruction_loss(rows)
            else:
                prediction, penalty = model(**_inputs(model, train.take(rows), side, feedback))
                error = F.mse_loss(prediction, targets[rows])
            loss = error + settings.l2 * penalty
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        score = rmse(predict(model, validation, side, feedback), validation.ratings)
        if score < best[0]:
            best = (score, epoch + 1, copy.deepcopy(model.state_dict()))
        elif epoch + 1 - best[1] >= settings.patience:
            break
    model.load_state_dict(best[2])
    model.eval()
    return model, {"validation_rmse": best[0], "best_epoch": float(best[1])}


@dataclass(frozen=True)
class RatingBlend:
    """A linear stack r = intercept + sum_m weight_m * r_m of several models' predictions, fitted by least
    squares on ratings none of the models trained on. Unconstrained weights with an intercept also undo
    each model's shrinkage towards the mean, which a convex mix cannot."""

    names: tuple[str, ...]
    intercept: float
    weights: tuple[float, ...]
    rating_range: tuple[float, float] = DEFAULT_RATING_RANGE

    @classmethod
    def fit(
        cls,
        predictions: dict[str, np.ndarray],
        ratings: np.ndarray,
        rating_range: tuple[float, float] = DEFAULT_RATING_RANGE,
    ) -> RatingBlend:
        """predictions: model name -> (N,) on the blend's ratings (N,); blended predictions are clipped to
        ``rating_range``."""
        names = tuple(predictions)
        design = np.column_stack([np.ones(len(ratings))] + [predictions[n] for n in names]).astype(np.float64)
        solution = np.linalg.lstsq(design, ratings.astype(np.float64), rcond=None)[0]
        return cls(names, float(solution[0]), tuple(float(w) for w in solution[1:]), rating_range)

    def predict(self, predictions: dict[str, np.ndarray]) -> np.ndarray:
        blended = self.intercept + sum(
            w * predictions[n] for n, w in zip(self.names, self.weights, strict=True)
        )
        return np.clip(blended, *self.rating_range)
