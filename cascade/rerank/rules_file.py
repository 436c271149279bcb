"""The rules file: business rules an operator declares in TOML and changes without a deploy.

Each ``[[rules]]`` table is one rule, chosen by its ``kind`` and applied in the file's order (filters
first, then boosts, then the selection rules: caps and MMR, then pins; see ``engine.py``)::

    version = "2026-12-01"            # optional; else a hash of the file's content

    [[rules]]
    kind = "blocklist"
    name = "legal-hold"
    items = ["1234"]
    genres = ["Horror"]

    [[rules]]
    kind = "boost"
    name = "comedy-week"
    genres = ["Comedy"]
    factor = 1.2
    starts = 2026-12-01T00:00:00Z
    ends = 2026-12-08T00:00:00Z

Unknown keys and kinds are refused, with the rule's position, name and field in the message.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cascade.core.config import tomllib  # the standard library's parser, or tomli before Python 3.11
from cascade.core.errors import ConfigError


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("", description="Shown in explanations and logs; defaults to the rule's kind.")
    starts: datetime | None = Field(None, description="Active from this time on (inclusive); unset: always.")
    ends: datetime | None = Field(None, description="Active until this time (exclusive); unset: forever.")

    @model_validator(mode="after")
    def _window(self):
        if self.starts is not None and self.ends is not None and _utc(self.ends) <= _utc(self.starts):
            raise ValueError("ends must be after starts")
        return self

    @property
    def label(self) -> str:
        """How explanations and counts name the rule: ``kind:name``, or the kind alone."""
        kind = self.kind  # type: ignore[attr-defined]
        return f"{kind}:{self.name}" if self.name else kind

    def active(self, at: float) -> bool:
        """Whether the rule applies at unix time ``at``."""
        if self.starts is not None and at < _utc(self.starts).timestamp():
            return False
        return self.ends is None or at < _utc(self.ends).timestamp()


def _utc(moment: datetime) -> datetime:
    # a TOML local date-time has no zone: read it as UTC, the zone the service logs in
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


class BlocklistRule(_Rule):
    """Never recommend these items, nor items of these genres."""

    kind: Literal["blocklist"]
    items: tuple[str, ...] = Field((), description="External item ids.")
    genres: tuple[str, ...] = Field((), description="Genre names; an item with any of them is removed.")


class GenreFilterRule(_Rule):
    """Keep only items of the ``include`` genres (when given) and drop items of the ``exclude`` genres."""

    kind: Literal["genre_filter"]
    include: tuple[str, ...] = Field((), description="Genre names; empty keeps every genre.")
    exclude: tuple[str, ...] = Field((), description="Genre names removed.")


class MinQualityRule(_Rule):
    """Drop items whose smoothed mean rating is below a floor (items with no ratings are kept)."""

    kind: Literal["min_quality"]
    min_mean_rating: float = Field(description="Floor on the data set's rating scale, e.g. 3.0.")


class ReleaseWindowRule(_Rule):
    """Keep items released within [min_year, max_year] (items of unknown year are kept)."""

    kind: Literal["release_window"]
    min_year: int | None = Field(None, description="Earliest release year kept.")
    max_year: int | None = Field(None, description="Latest release year kept.")
    max_age_years: float | None = Field(
        None, gt=0, description="Keep items at most this many years old as of the request's time."
    )


class BoostRule(_Rule):
    """Multiply the score of the listed items, or of the listed genres' items, by ``factor`` (< 1 demotes)."""

    kind: Literal["boost"]
    factor: float = Field(gt=0, description="Multiplier of the item's score; below 1 demotes.")
    items: tuple[str, ...] = Field((), description="External item ids.")
    genres: tuple[str, ...] = Field((), description="Genre names.")

    @model_validator(mode="after")
    def _targets(self):
        if not self.items and not self.genres:
            raise ValueError("a boost needs items or genres")
        return self


class FreshnessRule(_Rule):
    """Favour recent releases: score x (1 + weight x 2^(-age / half_life)), age in years since release as of
    the request's time (items of unknown year get no boost)."""

    kind: Literal["freshness"]
    half_life_years: float = Field(gt=0, description="Age at which the boost has halved.")
    weight: float = Field(0.2, gt=0, description="Boost of a new release: its score x (1 + weight).")


class CapRule(_Rule):
    """At most ``max_per_value`` items sharing a genre among the first ``within`` positions."""

    kind: Literal["cap"]
    attribute: Literal["genre"] = Field("genre", description="The item attribute capped.")
    max_per_value: int = Field(ge=1, description="Most items with one value of the attribute.")
    within: int | None = Field(None, ge=1, description="Positions the cap covers; unset: the whole list.")


class MMRRule(_Rule):
    """Maximal marginal relevance over the two-tower item vectors: each next item maximises
    (1 - lambda) x relevance - lambda x (its highest cosine similarity to the items already chosen)."""

    kind: Literal["mmr"]
    lambda_: float = Field(alias="lambda", ge=0, le=1, description="Weight of diversity against relevance.")


class PinRule(_Rule):
    """Put ``item`` at ``position`` (1-based) while the rule is active, unless a filter removed it."""

    kind: Literal["pin"]
    item: str = Field(description="External item id.")
    position: int = Field(ge=1, description="1-based position in the returned list.")


Rule = Annotated[
    BlocklistRule
    | GenreFilterRule
    | MinQualityRule
    | ReleaseWindowRule
    | BoostRule
    | FreshnessRule
    | CapRule
    | MMRRule
    | PinRule,
    Field(discriminator="kind"),
]


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field("", description="Shown in responses' model_versions; default: a content hash.")
    rules: tuple[Rule, ...] = Field((), description="The rules, applied in order within their stage.")

    @model_validator(mode="after")
    def _one_mmr(self):
        if sum(isinstance(rule, MMRRule) for rule in self.rules) > 1:
            raise ValueError("at most one mmr rule")
        return self


def parse_rules(text: str, source: str = "rules file") -> RulesFile:
    """A validated rules file from TOML ``text``; ConfigError naming the rule and field when invalid."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        parsed = RulesFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc, raw)}") from exc
    if not parsed.version:
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        parsed = parsed.model_copy(update={"version": f"sha256:{digest}"})
    return parsed


def load_rules(path: Path | str) -> RulesFile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"rules file {path}: cannot read it: {exc}") from exc
    return parse_rules(text, f"rules file {path}")


def _describe(error: ValidationError, raw: dict) -> str:
    """Each problem as ``rules[2] (name 'comedy-week', kind 'boost').factor: <message>``."""
    problems = []
    for problem in error.errors():
        location = list(problem["loc"])
        where = ""
        if len(location) >= 2 and location[0] == "rules" and isinstance(location[1], int):
            position = location[1]
            rules = raw.get("rules")
            rule = rules[position] if isinstance(rules, list) and position < len(rules) else {}
            rule = rule if isinstance(rule, dict) else {}
            described = [f"kind {rule.get('kind')!r}"]
            if rule.get("name"):
                described.insert(0, f"name {rule['name']!r}")
            where = f"rules[{position}] ({', '.join(described)})"
            # the discriminated union adds the kind as a path step; the field follows it
            rest = [str(step) for step in location[2:] if step != rule.get("kind")]
            if rest:
                where += "." + ".".join(rest)
        else:
            where = ".".join(str(step) for step in location) or "file"
        problems.append(f"{where}: {problem['msg']}")
    return "; ".join(problems)
