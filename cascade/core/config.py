"""What every component's config is built on, and reading a config file.

Each component declares its own pydantic config beside its code (``cascade.data.config``,
``cascade.recall.config``, ``cascade.ranking.config``, ...); ``cascade.config.AppConfig`` composes them into
the one app config that one TOML file loads. Every config forbids unknown keys, so that a typo in
``cascade.toml`` fails loudly instead of being ignored, and is frozen, so that no stage changes another's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib; tomli is the same parser
    import tomli as tomllib


class ComponentConfig(BaseModel):
    """Base of every component's config: unknown keys rejected, values immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureConfig(ComponentConfig):
    """The feature schema's encoding (``cascade.core.schema``): kept here, apart from the schema's code,
    so that loading a config imports no data library."""

    max_genres: int = Field(6, ge=1, le=32, description="Genre lists are padded or truncated to this length.")
    title_length: int = Field(
        15, ge=1, le=64, description="Title word-id lists are padded/truncated to this."
    )
    history_length: int = Field(
        50, ge=1, le=1000, description="Most recent interactions kept per user as behaviour history."
    )
    zip_prefix_length: int = Field(
        2, ge=1, le=5, description="Leading zip-code characters kept as the user's region feature."
    )


def read_config_file(path: Path | str) -> dict[str, Any]:
    """The raw mapping in a TOML file, or in a JSON one (a resolved config as artifact manifests save it and
    as processes pass it to each other)."""
    path = Path(path)
    with open(path, "rb") as fh:
        return json.load(fh) if path.suffix == ".json" else tomllib.load(fh)
