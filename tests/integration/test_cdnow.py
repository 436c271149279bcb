"""CDNOW's real purchases, fetched the way ML-100K is (the lifetimes wheel from PyPI, read as a zip, never
installed), and RFM on them at a cut-off."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cascade.customers.rfm import RFMScores, rfm_indicators, value_bands
from cascade.data.transactions import Transactions


def test_cdnow_is_fetched_from_its_wheel_and_scored(tmp_path):
    fetched = subprocess.run(
        [sys.executable, "-m", "cascade.cli", "data", "fetch", "cdnow"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CASCADE_DATA__DATA_DIR": str(tmp_path)},
    )
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    transactions = Transactions.load(tmp_path / "cdnow")
    table = transactions.table
    assert len(transactions.customers) == 23_570 and len(table) == 69_659  # as CDNOW's documentation has it
    assert table["amount"].sum() == pytest.approx(2_500_315.63, rel=1e-9)
    first, last = (pd.Timestamp(t, unit="s") for t in (table["timestamp"].min(), table["timestamp"].max()))
    assert (first.date().isoformat(), last.date().isoformat()) == ("1997-01-01", "1998-06-30")
    # the calibration period the CLV literature uses: up to 1 October 1997
    as_of = pd.Timestamp("1997-10-01", tz="UTC").timestamp()
    rfm = rfm_indicators(table, as_of)
    assert len(rfm) == 23_570  # CDNOW is the cohort of customers whose first purchase was in early 1997
    scores = RFMScores.of(rfm)
    for score in (scores.recency, scores.frequency, scores.monetary):
        assert score.min() >= 1 and score.max() <= 5
    bands = value_bands(scores.current_value((0.221, 0.341, 0.439)))
    assert set(np.unique(bands).tolist()) == {1, 2, 3, 4, 5}


def test_the_value_models_find_next_periods_spenders_on_cdnow(tmp_path):
    from cascade.config import AppConfig
    from cascade.data.fetch import fetch
    from cascade.training.value import evaluate_value

    fetch("cdnow", tmp_path)
    report = evaluate_value(AppConfig.model_validate({"data": {"data_dir": str(tmp_path)}}))
    split = report.pop("_split")
    assert split["test_customers"] == 23_570 and 0.1 < split["test_buyers_share"] < 0.5
    assert set(report) == {"weighted RFM", "BP 14-29-1", "LightGBM", "k-means segments"}
    for name, result in report.items():
        # the bar for tier A: at least 60% of the next period's spend from the best quarter
        assert result["value_share_by_tier"]["A"] >= 0.6, name
        assert result["spearman"] > 0.35, name
        assert np.array(result["confusion_predicted_by_realised"]).sum() == 23_570
    segments = report["k-means segments"]["segments"]
    assert sum(s["customers_share"] for s in segments) == pytest.approx(1.0)
    best = segments[0]  # the segment worth most in training holds far more than its share of what followed
    assert best["value_share"] > 2 * best["customers_share"]
