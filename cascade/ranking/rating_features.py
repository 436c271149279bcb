"""The rating models' predicted rating of each candidate, as ranking features.

A held-out positive is an item the user rated highly, and 40% of what the ranker put in a user's top 10
without them (MovieLens-100K) was watched and rated below the positive threshold. Item statistics say
how an item is rated on average; these say how this user would rate it, which is what separates the two.

Each model is reduced at fit time to what a request needs, so a request costs a gather and a (C, K)
product per model rather than a network pass over the catalogue:
- PMF: user and item factors, r = mu + p_u . q_c;
- the SVD++ hybrid: the module itself, with N(u) taken from the request's behaviour sequence (the history
  serving has), so its implicit term follows the user's latest events;
- I-AutoRec: every item's code h_i = sigmoid(V r_i + c), computed once, and the decoder's row for the user,
  r = W_u . h_c + b_u.
Predictions are clamped to the data set's rating scale (the schema's ``rating_range``) as the models' own
``predict`` is.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from cascade.core.errors import ArtifactError
from cascade.core.schema import DEFAULT_RATING_RANGE, FeatureSchema, ItemFeatures, UserFeatures
from cascade.ranking.features import UserRow
from cascade.ranking.rating import (
    PMF,
    RATING_MODELS,
    USER_SIDE,
    HybridRatingModel,
    ImplicitFeedback,
    ItemAutoRec,
    RatingData,
    build_rating_model,
    train_rating_model,
)

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "rating_models.safetensors"
META_FILE = "rating_models.json"
_VALIDATION_SHARE = 0.05  # of the ratings, for each model's early stopping
_AUTOREC_CHUNK = 512  # items encoded at once when computing the codes: (chunk, U) dense columns
_KIND_OF = {PMF: "pmf", HybridRatingModel: "hybrid", ItemAutoRec: "autorec"}


class RatingFeatureModels:
    """Rating models trained on one window of ratings, predicting (C, len(kinds)) ratings for a request's
    candidates; ``kinds`` are RATING_MODELS keys, in the order of the feature columns."""

    def __init__(
        self,
        kinds: tuple[str, ...],
        tensors: dict[str, torch.Tensor],
        means: dict[str, float],
        hybrid: HybridRatingModel | None = None,
        metrics: dict[str, float] | None = None,
        rating_range: tuple[float, float] = DEFAULT_RATING_RANGE,
    ):
        self.kinds = kinds
        self.rating_range = rating_range
        self.means = means
        self.metrics = metrics or {}
        self.hybrid = hybrid
        # numpy views for the per-request gathers; the tensors are what is saved
        self.tensors = {name: t.contiguous() for name, t in tensors.items()}
        self._arrays = {name: t.numpy() for name, t in self.tensors.items()}

    @classmethod
    def fit(
        cls,
        kinds: tuple[str, ...],
        schema: FeatureSchema,
        users: UserFeatures,
        items: ItemFeatures,
        interactions: pd.DataFrame,
        seed: int,
        progress: bool = False,
    ) -> RatingFeatureModels:
        """Train each kind on the ratings of ``interactions``, early-stopped on a seeded 5% of them."""
        data = RatingData.of_interactions(schema, interactions)
        known = (data.users > 0) & (data.items > 0)
        data = data.take(np.flatnonzero(known))
        order = np.random.default_rng(seed).permutation(len(data.ratings))
        cut = max(1, int(len(order) * _VALIDATION_SHARE))
        validation, train = data.take(order[:cut]), data.take(order[cut:])
        feedback = ImplicitFeedback(train, schema.num_users)
        side = {name: getattr(users, name) for name in USER_SIDE}
        models: dict[str, nn.Module] = {}
        metrics: dict[str, float] = {}
        for kind in tqdm(
            kinds, desc="ranking: rating models", unit="model", disable=not progress, leave=False
        ):
            torch.manual_seed(seed)
            started = time.perf_counter()
            model = build_rating_model(kind, schema, items, train)
            models[kind], fitted = train_rating_model(
                model, train, validation, side, feedback, RATING_MODELS[kind][1], seed
            )
            metrics[f"{kind}_validation_rmse"] = fitted["validation_rmse"]
            metrics[f"{kind}_train_seconds"] = time.perf_counter() - started
        logger.info("rating features: %s", {k: round(v, 4) for k, v in metrics.items()})
        rated = np.bincount(train.users, minlength=schema.num_users) > 0
        return cls.of_models(models, rated, metrics, schema.rating_range)

    @classmethod
    def of_models(
        cls,
        models: dict[str, nn.Module],
        rated: np.ndarray,
        metrics: dict[str, float] | None = None,
        rating_range: tuple[float, float] = DEFAULT_RATING_RANGE,
    ) -> RatingFeatureModels:
        """Reduce trained models (kind -> PMF / HybridRatingModel / ItemAutoRec) to what requests need.

        rated (U,) bool: users with training ratings. The others' rows were never fitted (initial values,
        or shrunk by L2 alone), so they are neutralised: zero factors and bias, which leaves PMF the global
        mean, the hybrid its demographic and history terms, and I-AutoRec the mean rating, a constant
        across a request's candidates rather than noise (a user unknown to the schema is row 0)."""
        unfitted = torch.from_numpy(~np.asarray(rated, dtype=bool))
        tensors: dict[str, torch.Tensor] = {}
        means: dict[str, float] = {}
        hybrid = None
        for kind, model in models.items():
            if _KIND_OF.get(type(model)) != kind:
                raise ValueError(f"{kind!r} names a {type(model).__name__}")
            with torch.no_grad():
                if isinstance(model, PMF):
                    model.user_factors.weight[unfitted] = 0.0
                    means[kind] = model.mean
                    tensors |= {
                        "pmf.user_factors": model.user_factors.weight.detach().clone(),
                        "pmf.item_factors": model.item_factors.weight.detach().clone(),
                    }
                elif isinstance(model, HybridRatingModel):
                    model.user_factors.weight[unfitted] = 0.0
                    model.user_bias.weight[unfitted] = 0.0
                    means[kind] = model.mean
                    hybrid = model.eval()
                    tensors |= {f"hybrid.{k}": v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    model.decoder.weight[unfitted] = 0.0
                    model.decoder.bias[unfitted] = (
                        float(model.known_ratings.mean()) if model.known_count else 3.0
                    )
                    tensors |= _autorec_tensors(model)
        return cls(tuple(models), tensors, means, hybrid, metrics, rating_range)

    @torch.inference_mode()
    def predict(self, user: UserRow, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """user: the request's user; history: item indices (H,), latest first; candidates: (C,) item
        indices -> (C, len(kinds)) float32 predicted ratings."""
        a = self._arrays
        u = user.user
        columns = []
        for kind in self.kinds:
            if kind == "pmf":
                raw = self.means[kind] + a["pmf.item_factors"][candidates] @ a["pmf.user_factors"][u]
            elif kind == "autorec":
                raw = (
                    a["autorec.codes"][candidates] @ a["autorec.decoder_weight"][u]
                    + a["autorec.decoder_bias"][u]
                )
            else:
                raw = self._hybrid(user, history, candidates)
            columns.append(raw)
        return np.clip(np.column_stack(columns), *self.rating_range).astype(np.float32)

    def _hybrid(self, user: UserRow, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        assert self.hybrid is not None
        count = len(candidates)
        bag = torch.from_numpy(np.asarray(history, dtype=np.int64))
        weights = torch.full((len(bag),), 1.0 / np.sqrt(max(len(bag), 1)), dtype=torch.float32)
        prediction, _ = self.hybrid(
            users=torch.full((count,), user.user, dtype=torch.int64),
            items=torch.from_numpy(np.asarray(candidates, dtype=np.int64)),
            side={n: torch.full((count,), getattr(user, n), dtype=torch.int64) for n in USER_SIDE},
            bags=(bag, torch.zeros(1, dtype=torch.int64), weights),
            bag_of=torch.zeros(count, dtype=torch.int64),
        )
        return prediction.numpy()

    def save(self, folder: Path) -> None:
        save_file(self.tensors, str(folder / WEIGHTS_FILE))
        meta = {"kinds": list(self.kinds), "means": self.means, "metrics": self.metrics}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path, schema: FeatureSchema, items: ItemFeatures) -> RatingFeatureModels:
        meta = json.loads((folder / META_FILE).read_text())
        tensors = load_file(str(folder / WEIGHTS_FILE))
        kinds = tuple(meta["kinds"])
        unknown = set(kinds) - set(RATING_MODELS)
        if unknown:
            raise ArtifactError(f"rating models {sorted(unknown)} in {folder} are not supported by this code")
        hybrid = None
        if "hybrid" in kinds:
            empty = RatingData(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
            hybrid = build_rating_model("hybrid", schema, items, empty)
            hybrid.mean = meta["means"]["hybrid"]
            prefix = "hybrid."
            hybrid.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
            hybrid.eval()
        return cls(kinds, tensors, meta["means"], hybrid, meta.get("metrics"), schema.rating_range)


@torch.inference_mode()
def _autorec_tensors(model: ItemAutoRec) -> dict[str, torch.Tensor]:
    """Every item's code (I, hidden) and the decoder (U, hidden), (U,): all a prediction needs."""
    model.eval()
    codes = [
        torch.sigmoid(
            model.encoder(model.item_columns(np.arange(s, min(s + _AUTOREC_CHUNK, model.num_items)))[0])
        )
        for s in range(0, model.num_items, _AUTOREC_CHUNK)
    ]
    return {
        "autorec.codes": torch.cat(codes),
        "autorec.decoder_weight": model.decoder.weight.detach().clone(),
        "autorec.decoder_bias": model.decoder.bias.detach().clone(),
    }
