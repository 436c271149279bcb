"""The default engine: every part in this process, one after another."""

from __future__ import annotations

import pandas as pd

from cascade.core.engines.base import OfflineEngine, PartitionedJob, PartResult


class LocalEngine(OfflineEngine):
    """Parts run here in order. One part (the default) is the job computed on its whole input; more are
    how the tests check that splitting an input changes nothing without starting Ray."""

    name = "local"

    def __init__(self, partitions: int = 1):
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        self.partitions = partitions

    def map_parts(self, job: PartitionedJob, parts: list[pd.DataFrame]) -> list[PartResult]:
        return [job.run_part({name: part[name].to_numpy() for name in part.columns}) for part in parts]

    def close(self) -> None:
        """Nothing was started."""


LOCAL = LocalEngine()
