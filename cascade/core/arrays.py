"""Array helpers for the request path, where each call sees a few hundred values and per-call overhead is
what costs."""

from __future__ import annotations

import numpy as np


def isin(values: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """``np.isin(values, pool)`` for integer arrays -> (V,) bool.

    np.isin sorts values and pool together (or, for integers, allocates a table spanning their range, a
    megabyte at a million items) on every call. Sorting only the pool and binary-searching it is several
    times faster at a request's sizes, and pools are small (a user's seen items)."""
    values = np.asarray(values)
    if len(pool) == 0 or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    pool = np.sort(np.asarray(pool), kind="stable")
    slots = np.searchsorted(pool, values)
    slots[slots == len(pool)] = 0  # past the end: compared with pool[0], which is smaller, so False
    return pool[slots] == values


def rows_by_key(keys: np.ndarray, values: np.ndarray) -> dict:
    """key -> ``values`` of its rows, in row order, keys ascending (what ``{k: g for k, g in
    frame.groupby(key)[column]}`` gives) -> dict of Python int or str keys to (n_k,) arrays.

    One stable sort and one split instead of a pandas group per key: at hundreds of thousands of users the
    per-group overhead is most of the time."""
    keys, values = np.asarray(keys), np.asarray(values)
    if len(keys) == 0:
        return {}
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    return dict(zip(ordered[starts].tolist(), np.split(values[order], starts[1:])))
