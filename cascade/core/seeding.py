"""One seed for every source of randomness."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; returns a numpy Generator for code that takes one explicitly.

    FAISS has no global seed: code that trains a FAISS index passes ``seed`` to its clustering itself.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return np.random.default_rng(seed)
