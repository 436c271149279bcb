"""What the rules can see of each catalogue item: its external id, genres, release year, a quality score and
its two-tower vector. Built by the caller from the served models, so the rerank layer depends on no model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ItemAttributes:
    """Row i describes item index i; row 0 is padding.

    item_lookup: external item id -> its index, None when unknown; genres: (N, G) genre ids, 0 = none,
    genre g named ``genre_names[g - 1]``; years: (N,) release year, 0 = unknown; quality: (N,) smoothed mean
    rating on the data set's scale (NaN = unknown); vectors: (N - 1, D) unit vectors of item indices
    1..N - 1 (the two-tower embeddings the ANN index holds; MMR's similarity), or None when there are none."""

    item_lookup: Callable[[str], int | None]
    genres: np.ndarray
    genre_names: tuple[str, ...]
    years: np.ndarray
    quality: np.ndarray
    vectors: np.ndarray | None = None

    def item_index(self, item_id: str) -> int | None:
        """The index of external ``item_id``, None when the catalogue does not hold it."""
        return self.item_lookup(item_id)

    def genre_id(self, name: str) -> int | None:
        """The id of genre ``name`` (1-based), None when no item has it."""
        try:
            return self.genre_names.index(name) + 1
        except ValueError:
            return None

    def genre_name(self, genre: int) -> str:
        return self.genre_names[genre - 1]

    def vectors_of(self, items: np.ndarray) -> np.ndarray:
        """(C,) item indices (none 0) -> their (C, D) vectors."""
        if self.vectors is None:
            raise ValueError("this catalogue has no item vectors")
        return self.vectors[items - 1]

    @property
    def num_items(self) -> int:
        return len(self.years)
