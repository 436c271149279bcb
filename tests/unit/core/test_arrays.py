import numpy as np
import pytest

from cascade.core.arrays import isin


@pytest.mark.parametrize("pool_size", [0, 1, 7, 300])
def test_isin_matches_numpy(pool_size):
    rng = np.random.default_rng(pool_size)
    for _ in range(20):
        values = rng.integers(-3, 60, size=int(rng.integers(0, 200)))
        pool = rng.integers(-3, 60, size=pool_size)  # repeats, negatives, values past both ends
        np.testing.assert_array_equal(isin(values, pool), np.isin(values, pool))
    big = np.array([np.iinfo(np.int64).max, 0, -1])
    np.testing.assert_array_equal(isin(big, np.array([-1])), [False, False, True])
