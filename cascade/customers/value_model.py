"""Models of a customer's value in the next period, from the indicators as of a cut-off: the method's
weighted RFM and its BP network 14-29-1, and a LightGBM regressor beside them. Each returns a score whose
order is what tiers are cut from; the BP network's is the method's K in [0, 1]."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import pandas as pd
import torch
from torch import nn

from cascade.customers.config import CustomersConfig
from cascade.customers.rfm import RFM, RFMScores
from cascade.customers.weights import rfm_weights


class ValueModel(ABC):
    name: str

    @abstractmethod
    def fit(self, indicators: pd.DataFrame, value: np.ndarray) -> ValueModel:
        """indicators (C, 14) as of a cut-off; value (C,) money spent in the period after it."""

    @abstractmethod
    def predict(self, indicators: pd.DataFrame) -> np.ndarray:
        """(C,) scores, higher for more valuable customers."""


class WeightedRFM(ValueModel):
    """The method's current value C = R x W_R + F x W_F + M x W_M over 1-5 scores, weighted as configured
    (``customers.weights``); nothing to fit."""

    name = "weighted RFM"

    def __init__(self, config: CustomersConfig):
        self.config = config

    def fit(self, indicators: pd.DataFrame, value: np.ndarray) -> WeightedRFM:
        return self

    def predict(self, indicators: pd.DataFrame) -> np.ndarray:
        rfm = RFM(
            customers=indicators.index.to_numpy(),
            recency_days=indicators["recency_days"].to_numpy(),
            frequency=indicators["frequency"].to_numpy(),
            monetary=indicators["monetary"].to_numpy(),
            as_of=0.0,
        )
        return RFMScores.of(rfm).current_value(rfm_weights(self.config, rfm))


class BPNetwork(ValueModel):
    """The method's back-propagation network: 14 inputs min-max normalised to [0, 1], 29 sigmoid hidden
    units, one sigmoid output K in [0, 1], trained with squared error on the next period's value put on
    [0, 1] (log1p of the spend over its largest in training: spend is heavy-tailed)."""

    name = "BP 14-29-1"

    def __init__(self, seed: int, hidden: int = 29, epochs: int = 400, learning_rate: float = 0.02):
        self.seed, self.hidden, self.epochs, self.learning_rate = seed, hidden, epochs, learning_rate

    def _inputs(self, indicators: pd.DataFrame) -> torch.Tensor:
        x = (indicators.to_numpy(dtype=np.float64) - self.low) / self.span
        return torch.from_numpy(np.clip(x, 0.0, 1.0).astype(np.float32))

    def fit(self, indicators: pd.DataFrame, value: np.ndarray) -> BPNetwork:
        x = indicators.to_numpy(dtype=np.float64)
        self.low, high = x.min(axis=0), x.max(axis=0)
        self.span = np.where(high > self.low, high - self.low, 1.0)
        target = np.log1p(np.maximum(value, 0.0))
        target = target / max(float(target.max()), 1e-12)
        torch.manual_seed(self.seed)
        self.network = nn.Sequential(
            nn.Linear(x.shape[1], self.hidden), nn.Sigmoid(), nn.Linear(self.hidden, 1), nn.Sigmoid()
        )
        inputs, goal = self._inputs(indicators), torch.from_numpy(target.astype(np.float32))[:, None]
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.learning_rate)
        for _ in range(self.epochs):  # full batch: tens of thousands of rows of 14 numbers
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(self.network(inputs), goal)
            loss.backward()
            optimizer.step()
        return self

    @torch.inference_mode()
    def predict(self, indicators: pd.DataFrame) -> np.ndarray:
        return self.network(self._inputs(indicators))[:, 0].numpy().astype(np.float64)

    def state(self) -> dict[str, np.ndarray]:
        """Everything a fitted network is, as arrays (no pickle: ``numpy.savez`` and back)."""
        weights = {f"bp.{name}": t.detach().numpy() for name, t in self.network.state_dict().items()}
        return {"bp.low": self.low, "bp.span": self.span, **weights}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], seed: int = 0) -> BPNetwork:
        model = cls(seed, hidden=int(state["bp.0.weight"].shape[0]))
        model.low, model.span = state["bp.low"], state["bp.span"]
        model.network = nn.Sequential(
            nn.Linear(len(model.low), model.hidden), nn.Sigmoid(), nn.Linear(model.hidden, 1), nn.Sigmoid()
        )
        model.network.load_state_dict(
            {
                name.removeprefix("bp."): torch.from_numpy(np.asarray(array))
                for name, array in state.items()
                if name.startswith("bp.") and name not in ("bp.low", "bp.span")
            }
        )
        return model


class LightGBMValue(ValueModel):
    """Gradient-boosted trees on log1p of the next period's spend."""

    name = "LightGBM"

    def __init__(self, seed: int, rounds: int = 300):
        self.seed, self.rounds = seed, rounds

    def fit(self, indicators: pd.DataFrame, value: np.ndarray) -> LightGBMValue:
        import lightgbm

        params = {
            "objective": "regression", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 50,
            "bagging_fraction": 0.8, "bagging_freq": 1, "feature_fraction": 0.8, "seed": self.seed,
            "deterministic": True, "num_threads": 1, "verbose": -1,
        }  # fmt: skip
        train = lightgbm.Dataset(indicators.to_numpy(dtype=np.float64), np.log1p(np.maximum(value, 0.0)))
        self.model = lightgbm.train(params, train, num_boost_round=self.rounds)
        return self

    def predict(self, indicators: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.model.predict(indicators.to_numpy(dtype=np.float64)), dtype=np.float64)


class KMeansSegments(ValueModel):
    """The other method the material names: k-means over the indicators (log1p, then min-max to [0, 1],
    as fitted on the training customers), each segment valued at its training customers' mean next-period
    spend. A customer's score is their nearest segment's value, so the segments are ordered tiers."""

    name = "k-means segments"

    def __init__(self, seed: int, segments: int = 4, iterations: int = 50):
        self.seed, self.segments, self.iterations = seed, segments, iterations

    def _points(self, indicators: pd.DataFrame) -> np.ndarray:
        x = np.log1p(np.maximum(indicators.to_numpy(dtype=np.float64), 0.0))
        return np.ascontiguousarray(np.clip((x - self.low) / self.span, 0.0, 1.0), dtype=np.float32)

    def fit(self, indicators: pd.DataFrame, value: np.ndarray) -> KMeansSegments:
        import faiss  # its k-means: already a dependency, seeded, and fast

        x = np.log1p(np.maximum(indicators.to_numpy(dtype=np.float64), 0.0))
        self.low, high = x.min(axis=0), x.max(axis=0)
        self.span = np.where(high > self.low, high - self.low, 1.0)
        points = self._points(indicators)
        kmeans = faiss.Kmeans(points.shape[1], self.segments, niter=self.iterations, seed=self.seed)
        kmeans.train(points)
        self.centroids = kmeans.centroids
        labels = self.assign(indicators)
        self.segment_value = np.array(
            [value[labels == s].mean() if (labels == s).any() else 0.0 for s in range(self.segments)]
        )
        return self

    def assign(self, indicators: pd.DataFrame) -> np.ndarray:
        """(C,) each customer's segment: the nearest centroid."""
        import faiss

        index = faiss.IndexFlatL2(self.centroids.shape[1])
        index.add(np.ascontiguousarray(self.centroids, dtype=np.float32))
        _, labels = index.search(self._points(indicators), 1)
        return labels[:, 0].astype(np.int64)

    def ranks(self, indicators: pd.DataFrame) -> np.ndarray:
        """(C,) each customer's segment as its rank by value: 1 the segment worth most in training."""
        rank = np.empty(self.segments, dtype=np.int64)
        rank[np.argsort(-self.segment_value, kind="stable")] = np.arange(1, self.segments + 1)
        return rank[self.assign(indicators)]

    def predict(self, indicators: pd.DataFrame) -> np.ndarray:
        return self.segment_value[self.assign(indicators)]

    def state(self) -> dict[str, np.ndarray]:
        return {
            "kmeans.low": self.low, "kmeans.span": self.span, "kmeans.centroids": self.centroids,
            "kmeans.segment_value": self.segment_value,
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], seed: int = 0) -> KMeansSegments:
        model = cls(seed, segments=len(state["kmeans.segment_value"]))
        model.low, model.span = state["kmeans.low"], state["kmeans.span"]
        model.centroids, model.segment_value = state["kmeans.centroids"], state["kmeans.segment_value"]
        return model
