"""The rerank stage's config: the business rules applied to the ranked list."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from cascade.core.config import ComponentConfig


class RerankConfig(ComponentConfig):
    filter_seen: bool = Field(True, description="Drop items the user has already interacted with.")
    rules_path: Path | None = Field(
        None,
        description="The rules file (TOML; cascade/rerank/rules_file.py describes it). The server re-reads "
        "it when it changes, every serving.reload_interval_s: a file that does not validate is refused with "
        "a message naming the rule and field, and the rules before it keep serving. Unset: no rules beyond "
        "the seen and exclude filters.",
    )
