"""The small interface an offline job and an engine that runs it share.

A job that grows with the data is written as a ``PartitionedJob``: what one part of its input gives
(``run_part``, run wherever the engine puts it), and how the parts' results add up (the caller's own code,
after ``map_parts``). The input is split by whatever the results are computed per (user, customer, item),
so the parts' results combine into exactly what the job computes on the whole.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from types import TracebackType

import numpy as np
import pandas as pd

# A part's result: named arrays of any shapes and lengths (a table and its side tables).
PartResult = dict[str, np.ndarray]


class PartitionedJob(ABC):
    """A job's per-part computation, with everything it reads besides the part itself as attributes (an
    engine ships the job once to each process that runs parts of it)."""

    name: str = "job"

    @abstractmethod
    def run_part(self, part: dict[str, np.ndarray]) -> PartResult:
        """The result of one part of the input, given as its columns."""


class OfflineEngine(ABC):
    """Runs a job's parts; ``partitions`` is how many parts its callers split an input into."""

    name: str
    partitions: int

    @abstractmethod
    def map_parts(self, job: PartitionedJob, parts: list[pd.DataFrame]) -> list[PartResult]:
        """``job.run_part`` of every part, in the order of ``parts``."""

    @abstractmethod
    def close(self) -> None:
        """Release what the engine started (a local Ray)."""

    def __enter__(self) -> OfflineEngine:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def contiguous_parts(count: int, parts: int, keys: np.ndarray | None = None) -> list[slice]:
    """At most ``parts`` non-empty, near-equal slices covering ``range(count)`` in order. With ``keys``
    (count,), sorted so that equal keys are adjacent, no key is split between two slices: each cut moves
    forward to the next change of key."""
    if count == 0:
        return []
    cuts = [0]
    for wanted in np.linspace(0, count, parts + 1)[1:-1].round().astype(int):
        cut = max(int(wanted), cuts[-1])
        if keys is not None and 0 < cut < count:
            # the first position at or after ``cut`` whose key differs from the one before it
            changes = np.flatnonzero(keys[cut:] != keys[cut - 1])
            cut = cut + int(changes[0]) if len(changes) else count
        if cuts[-1] < cut < count:
            cuts.append(cut)
    cuts.append(count)
    return [slice(a, b) for a, b in itertools.pairwise(cuts)]


def aligned_parts(count: int, parts: int, block: int, first: int = 0) -> list[slice]:
    """At most ``parts`` non-empty slices covering ``range(first, count)``, each a run of whole blocks of
    ``block`` counted from ``first``: a job that works in blocks then does the same arithmetic on each
    block whatever the parts are."""
    blocks = -(-(count - first) // block) if count > first else 0
    out = []
    for piece in contiguous_parts(blocks, parts):
        out.append(slice(first + piece.start * block, min(first + piece.stop * block, count)))
    return out
