"""The offline jobs run on two engines, and their results compared field by field, exactly: splitting a
job's input into parts must change nothing, not even the last bit of a float."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from cascade.core.engines import LOCAL, OfflineEngine
from cascade.customers.indicators import customer_indicators
from cascade.customers.log import CustomerLog
from cascade.ranking.statistics import ItemStatistics
from cascade.recall.channels import CooccurrenceRules


def assert_same_arrays(a, b, what: str) -> None:
    """Two dataclasses (or objects with __dict__) of arrays and scalars, equal field by field."""
    fields = [f.name for f in dataclasses.fields(a)] if dataclasses.is_dataclass(a) else list(vars(a))
    assert fields, what
    for name in fields:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, (
                f"{what}.{name}: {x.dtype}{x.shape} != {y.dtype}{y.shape}"
            )
            np.testing.assert_array_equal(x, y, err_msg=f"{what}.{name}")
        else:
            assert x == y, f"{what}.{name}: {x!r} != {y!r}"


def statistics_on(engine: OfflineEngine, schema, interactions: pd.DataFrame) -> ItemStatistics:
    return ItemStatistics.from_interactions(schema, interactions, 4.0, 30.0, engine)


def rules_on(engine: OfflineEngine, sequences, num_items: int) -> CooccurrenceRules:
    return CooccurrenceRules.mine(
        sequences.user,
        sequences.item,
        num_items,
        window=3,
        min_support=2,
        min_confidence=0.01,
        neighbours=20,
        engine=engine,
    )


def assert_same_indicators(engine: OfflineEngine, log: CustomerLog, as_of: float) -> pd.DataFrame:
    expected = customer_indicators(log, as_of, LOCAL)
    pd.testing.assert_frame_equal(customer_indicators(log, as_of, engine), expected, check_exact=True)
    return expected


def assert_same_examples(a, b) -> None:
    """Two RankingExamples: the same requests, candidates, features and labels in the same order."""
    assert_same_arrays(a.batch, b.batch, "batch")
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.users, b.users)
    assert a.positives.keys() == b.positives.keys()
