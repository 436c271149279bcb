"""Sparse helpers: gathering whole rows of CSR-style arrays (an ``indptr`` of row starts) without a Python
loop over rows, the binary user x item matrix the implicit-feedback models factorise, and the item -> item
rules found between two item lists."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


def interaction_matrix(user_rows: np.ndarray, item_rows: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Binary user x item matrix (duplicates count once) in CSR, as ``implicit`` expects."""
    data = np.ones(len(user_rows), dtype=np.float32)
    matrix = sp.csr_matrix((data, (user_rows, item_rows)), shape=shape)
    matrix.data[:] = 1.0
    return matrix


def csr_row_entries(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The entries of ``rows`` (R,), row after row, each row's in stored order -> (position (E,): which of
    ``rows`` each entry belongs to, entry (E,): its index into the CSR data arrays). A row may repeat."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = indptr[rows].astype(np.int64)
    lengths = indptr[rows + 1].astype(np.int64) - starts
    firsts = np.cumsum(lengths) - lengths
    # entry j of the r-th row is starts[r] + j
    entries = np.repeat(starts - firsts, lengths) + np.arange(lengths.sum(), dtype=np.int64)
    return np.repeat(np.arange(len(rows), dtype=np.int64), lengths), entries


@dataclass(frozen=True)
class PairRules:
    """Rules source -> target found between two item lists: ``source`` and ``target`` (E,) int64 positions
    into those lists, ``confidence`` (E,) float32 and ``support`` (E,) int32 of each rule."""

    source: np.ndarray
    target: np.ndarray
    confidence: np.ndarray
    support: np.ndarray

    @classmethod
    def empty(cls) -> PairRules:
        none = np.zeros(0, dtype=np.int64)
        return cls(none, none, np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int32))
