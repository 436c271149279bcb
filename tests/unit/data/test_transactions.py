"""Transactions: CDNOW's master file read and saved, and RFM computed from what happened before a cut-off
only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cascade.core.errors import DataError
from cascade.customers.rfm import RFMScores, quantile_scores, rfm_indicators, value_bands
from cascade.data.transactions import Transactions, load_cdnow

SAMPLE = """ customer_id  date number_of_cds  dollar_value
 00001 19970101  1   11.77
 00002 19970112  1   12.00
 00002 19970112  5   77.00
 00003 19970102  2   20.76
 00003 19970330  2   20.76
 00003 19970402  2   19.54
 00003 19971115  5   57.45
 00004 19970201  1   15.00
"""
DAY = 86_400


def test_cdnow_lines_become_purchases_and_round_trip(tmp_path):
    transactions = load_cdnow(SAMPLE)
    table = transactions.table
    assert len(table) == 8 and transactions.customers.tolist() == [1, 2, 3, 4]
    assert table["timestamp"].iloc[0] == pd.Timestamp("1997-01-01", tz="UTC").timestamp()
    assert table["amount"].sum() == pytest.approx(234.28)
    again = Transactions.load(transactions.save(tmp_path / "cdnow"))
    pd.testing.assert_frame_equal(again.table, table)
    with pytest.raises(DataError, match="line 3"):
        load_cdnow(" customer_id date n d\n 00001 19970101 1 1.0\n 00002 19970102 1\n")
    with pytest.raises(DataError, match="unreadable date"):
        load_cdnow(" 00001 19971301 1 1.0\n")


def test_rfm_reads_nothing_at_or_after_the_cut_off():
    table = load_cdnow(SAMPLE).table
    as_of = pd.Timestamp("1997-04-01", tz="UTC").timestamp()
    rfm = rfm_indicators(table, as_of)
    assert rfm.customers.tolist() == [1, 2, 3, 4]
    assert rfm.frequency.tolist() == [1, 1, 2, 1]  # customer 2's two lines are one purchase occasion
    assert rfm.monetary.tolist() == pytest.approx([11.77, 89.0, 41.52, 15.0])
    assert rfm.recency_days[2] == pytest.approx(2.0)  # last purchase 30 March
    # a leak test: whatever happens from the cut-off on changes nothing
    future = pd.DataFrame(
        {"customer_id": [1, 3, 9], "timestamp": [as_of, as_of + DAY, as_of + 2 * DAY], "amount": [1e6] * 3}
    )
    leaked = rfm_indicators(pd.concat([table, future], ignore_index=True), as_of)
    for name in ("customers", "recency_days", "frequency", "monetary"):
        np.testing.assert_array_equal(getattr(leaked, name), getattr(rfm, name))
    windowed = rfm_indicators(table, as_of, window_days=60)
    assert windowed.customers.tolist() == [3, 4]  # only purchases from 31 January on


def test_scores_are_quintiles_and_current_value_bands_span_one_to_five():
    values = np.arange(100, dtype=float)
    scores = quantile_scores(values)
    assert np.bincount(scores).tolist() == [0, 20, 20, 20, 20, 20]
    assert quantile_scores(values, higher_is_better=False)[0] == 5  # the most recent scores best
    assert len(set(quantile_scores(np.ones(10)).tolist())) == 1  # ties share one score
    rfm = rfm_indicators(load_cdnow(SAMPLE).table, pd.Timestamp("1998-01-01", tz="UTC").timestamp())
    rfm_scores = RFMScores.of(rfm)
    value = rfm_scores.current_value((0.221, 0.341, 0.439))
    assert ((value >= 1) & (value <= 5)).all()
    assert int(np.argmax(value)) == 2  # customer 3: latest, most frequent, biggest spender
    assert value_bands(np.array([1.0, 1.79, 1.8, 3.0, 4.19, 4.2, 5.0])).tolist() == [1, 1, 2, 3, 4, 5, 5]
    with pytest.raises(ValueError):
        rfm_scores.current_value((0, 0, 0))
