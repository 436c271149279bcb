"""The data stage's config: which prepared dataset, and how it is split for evaluation."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from cascade.core.config import ComponentConfig


class DataConfig(ComponentConfig):
    dataset: str = Field(
        "movielens-100k",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="Name of the prepared dataset under data_dir to use (a name, never a path).",
    )
    data_dir: Path = Field(Path("data"), description="Folder holding prepared datasets, one sub-folder each.")
    holdout_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of each user's latest interactions held out for evaluation."
    )
    positive_min_rating: float = Field(
        4.0, description="Held-out interactions rated at least this are the positives of every evaluation."
    )

    @property
    def path(self) -> Path:
        """The prepared dataset's folder."""
        return Path(self.data_dir) / self.dataset
