"""``[offline]``: where the offline jobs that grow with the data run."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cascade.core.config import ComponentConfig


class OfflineConfig(ComponentConfig):
    """Where the offline jobs that grow with the data run: item statistics, co-occurrence rule mining,
    embedding the catalogue and the users, customer-value indicators and ranking examples. Either engine
    gives the same results; Ray spreads a job's parts over processes and machines."""

    engine: Literal["local", "ray"] = Field(
        "local",
        description="local: in this process, as one piece. ray: split into `partitions` parts run by Ray "
        "Data tasks (`pip install cascade-recsys[ray]`).",
    )
    ray_address: str | None = Field(
        None,
        description="Ray cluster to run on (`auto`, `ray://head:10001`); unset, a Ray local to the command "
        "is started for it with `workers` CPUs and stopped after.",
    )
    workers: int = Field(
        0,
        ge=0,
        description="Parts of a job run at once (Ray tasks of one CPU each); 0: as many as Ray has CPUs.",
    )
    partitions: int = Field(
        8,
        ge=1,
        description="Parts each job's data is split into for Ray (by user, customer or item, whichever the "
        "job's results are computed per): more parts than workers keeps every worker busy to the end.",
    )
    object_store_mb: int = Field(
        0,
        ge=0,
        description="Shared-memory object store of a local Ray in MiB; 0: Ray's default (30% of memory).",
    )
