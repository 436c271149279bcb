"""The published value model (artifact kind ``value``): the method's BP network 14-29-1, whose output is
its K in [0, 1], and the k-means segments, as `cascade train value` fitted them, and how the feature load
applies them to every customer.

Arrays only, in one ``value.npz`` read with ``allow_pickle=False``: no pickle anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cascade.core.artifacts import ArtifactRef
from cascade.customers.indicators import customer_indicators, indicator_set
from cascade.customers.log import CustomerLog
from cascade.customers.tiers import TIERS, k_tiers
from cascade.customers.value_model import BPNetwork, KMeansSegments

VALUE = "value"
VALUE_FILE = "value.npz"
# the profile fields a value model writes, beside customers.profiles.VALUE_FIELDS, then one per indicator
MODEL_FIELDS = ("value_k", "k_tier", "cluster")
INDICATOR_PREFIX = "indicator."


@dataclass(frozen=True)
class ValueBundle:
    network: BPNetwork
    segments: KMeansSegments
    indicators: tuple[str, ...]  # the columns both were fitted on, in order

    def write(self, folder: Path) -> None:
        arrays = self.network.state() | self.segments.state()
        with open(folder / VALUE_FILE, "wb") as fh:
            np.savez(fh, **arrays, indicators=np.array(self.indicators))

    @classmethod
    def load(cls, ref: ArtifactRef) -> ValueBundle:
        ref.verify()  # the files are the ones the manifest sealed
        with np.load(ref.file(VALUE_FILE), allow_pickle=False) as archive:
            state = {name: archive[name] for name in archive.files}
        return cls(
            network=BPNetwork.from_state(state),
            segments=KMeansSegments.from_state(state),
            indicators=tuple(str(name) for name in state["indicators"].tolist()),
        )

    def profiles(self, log: CustomerLog, as_of: float) -> pd.DataFrame:
        """One row per customer with an event before ``as_of``: user_id, then MODEL_FIELDS as text (K to
        three places, the method's tier of K, the k-means segment by rank, 1 the most valuable), then the
        fourteen indicators K was computed from (``indicator.<name>``, four significant digits)."""
        if indicator_set(log) != self.indicators:
            raise ValueError(
                f"the value model was fitted on the indicators of another kind of log than {log.name}'s: "
                "train it again (cascade train value)"
            )
        indicators = customer_indicators(log, as_of)
        k = self.network.predict(indicators)
        table = pd.DataFrame(
            {
                "user_id": indicators.index.to_numpy(),
                "value_k": [f"{v:.3f}" for v in k.tolist()],
                "k_tier": [TIERS[t] for t in k_tiers(k).tolist()],
                "cluster": self.segments.ranks(indicators).astype(str),
            }
        )
        for name in self.indicators:
            table[INDICATOR_PREFIX + name] = [f"{v:.4g}" for v in indicators[name].tolist()]
        return table
