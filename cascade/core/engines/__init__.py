"""Where the offline jobs run: in this process (``LocalEngine``) or on Ray (``RayDataEngine``), chosen
by ``[offline]``; the jobs are written once, as ``PartitionedJob``s, for both."""

from __future__ import annotations

from cascade.core.engines.base import (
    OfflineEngine,
    PartitionedJob,
    PartResult,
    aligned_parts,
    contiguous_parts,
)
from cascade.core.engines.config import OfflineConfig
from cascade.core.engines.local import LOCAL, LocalEngine


def open_engine(config: OfflineConfig) -> OfflineEngine:
    """The configured engine; close it (or use it as a context manager) to stop a Ray it started."""
    if config.engine == "ray":
        from cascade.core.engines.ray_data import RayDataEngine

        return RayDataEngine(config)
    return LocalEngine()


__all__ = [
    "LOCAL",
    "LocalEngine",
    "OfflineConfig",
    "OfflineEngine",
    "PartResult",
    "PartitionedJob",
    "aligned_parts",
    "contiguous_parts",
    "open_engine",
]
