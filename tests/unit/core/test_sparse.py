"""Sparse helpers."""

from __future__ import annotations

import numpy as np


def test_csr_row_entries_lists_each_rows_entries_in_order():
    from cascade.core.sparse import csr_row_entries

    indptr = np.array([0, 2, 2, 5, 6])  # rows of 2, 0, 3 and 1 entries
    position, entries = csr_row_entries(indptr, np.array([2, 1, 0, 2]))
    assert entries.tolist() == [2, 3, 4, 0, 1, 2, 3, 4]
    assert position.tolist() == [0, 0, 0, 2, 2, 3, 3, 3]
    empty = csr_row_entries(indptr, np.array([], dtype=np.int64))
    assert empty[0].tolist() == [] and empty[1].tolist() == []
