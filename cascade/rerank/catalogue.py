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
    1..N - 1 (the two-tower embeddings the ANN index holds; MMR's similarity), or None when there are none;
    popularity: (N,) interactions per item in training (the popularity rule's), or None."""

    item_lookup: Callable[[str], int | None]
    genres: np.ndarray
    genre_names: tuple[str, ...]
    years: np.ndarray
    quality: np.ndarray
    vectors: np.ndarray | None = None
    popularity: np.ndarray | None = None  # (N,) training interactions per item; None: unknown

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

    def values(self, attribute: str, item: int) -> list[int]:
        """The values of ``attribute`` (genre, year or decade) item index ``item`` has: several genres, one
        year or decade, none when unknown."""
        if attribute == "genre":
            return [g for g in self.genres[item].tolist() if g > 0]
        year = int(self.years[item])
        if year <= 0:
            return []
        return [year] if attribute == "year" else [year - year % 10]

    def value_label(self, attribute: str, value: int) -> str:
        """How explanations name a value: ``Comedy``, ``1995``, ``1990s``."""
        if attribute == "genre":
            return self.genre_name(value)
        return f"{value}s" if attribute == "decade" else str(value)

    def vectors_of(self, items: np.ndarray) -> np.ndarray:
        """(C,) item indices (none 0) -> their (C, D) vectors."""
        if self.vectors is None:
            raise ValueError("this catalogue has no item vectors")
        return self.vectors[items - 1]

    @property
    def num_items(self) -> int:
        return len(self.years)
