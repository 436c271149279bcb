"""The rerank stage's config: the business rules applied to the ranked list."""

from __future__ import annotations

from pydantic import Field

from cascade.core.config import ComponentConfig


class RerankConfig(ComponentConfig):
    filter_seen: bool = Field(True, description="Drop items the user has already interacted with.")
