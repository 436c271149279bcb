"""The rules file: business rules an operator declares in TOML and changes without a deploy.

Each ``[[rules]]`` table is one rule, chosen by its ``kind`` and applied in the file's order (filters
first, then boosts, then the selection rules: caps, spacing and MMR, then exploration, then pins; see
``engine.py``). A rule may be limited to a time window (``starts``, ``ends``), to requests from some
surfaces (``surfaces = ["home"]``) and to users of some segments (``segments = ["new"]``), each declared in
a ``[[segments]]`` table: the rules of one segment are its rule set, chosen per request::

    version = "2026-12-01"            # optional; else a hash of the file's content

    [[segments]]
    name = "new"
    new_user = true

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
    segments = ["new"]

Unknown keys and kinds are refused, with the rule's position, name and field in the message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cascade.core.config import tomllib  # the standard library's parser, or tomli before Python 3.11
from cascade.core.errors import ConfigError
from cascade.core.schema import EVENT_TYPES

EventTypeName = Literal["view", "click", "rate", "purchase"]
# the item attributes caps and spacing rules group items by: a film's genres (several per film), its
# release year, or its release decade
Attribute = Literal["genre", "year", "decade"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


@dataclass(frozen=True)
class UserTraits:
    """What segments can test of the user a request is for. ``new_user``: no recorded behaviour yet (None:
    unknown, in no segment that asks); ``age``: years, -1 unknown; ``gender``: "F", "M" or ""; ``tier``:
    the customer-value tier in the user's profile ("" when it has none)."""

    new_user: bool | None = None
    gender: str = ""
    age: int = -1
    tier: str = ""


class Segment(BaseModel):
    """Users a rule set is for: every condition given must hold (none given: every user)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="Referred to by rules' ``segments``.")
    new_user: bool | None = Field(
        None, description="true: users with no recorded behaviour yet; false: returning users."
    )
    genders: tuple[Literal["F", "M"], ...] = Field((), description="Users of these genders.")
    min_age: int | None = Field(None, ge=0, description="Users at least this old (unknown age: not in).")
    max_age: int | None = Field(None, ge=0, description="Users at most this old (unknown age: not in).")
    tiers: tuple[str, ...] = Field(
        (), description="Users whose profile's customer-value tier (e.g. A-D) is one of these."
    )

    def matches(self, user: UserTraits) -> bool:
        if self.new_user is not None and user.new_user != self.new_user:
            return False
        if self.genders and user.gender not in self.genders:
            return False
        if self.min_age is not None and not (user.age >= 0 and user.age >= self.min_age):
            return False
        if self.max_age is not None and not (user.age >= 0 and user.age <= self.max_age):
            return False
        return not self.tiers or user.tier in self.tiers


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("", description="Shown in explanations and logs; defaults to the rule's kind.")
    starts: datetime | None = Field(None, description="Active from this time on (inclusive); unset: always.")
    ends: datetime | None = Field(None, description="Active until this time (exclusive); unset: forever.")
    surfaces: tuple[str, ...] = Field(
        (), description="Applies only to requests from these surfaces (e.g. home, item_page); empty: all."
    )
    segments: tuple[str, ...] = Field(
        (), description="Applies only to users in one of these segments ([[segments]]); empty: everyone."
    )

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
        """Whether the rule's time window covers unix time ``at``."""
        if self.starts is not None and at < _utc(self.starts).timestamp():
            return False
        return self.ends is None or at < _utc(self.ends).timestamp()

    def applies(self, at: float, surface: str, segments: frozenset[str]) -> bool:
        """Whether the rule applies to a request at unix time ``at`` from ``surface`` for a user in
        ``segments``."""
        if self.surfaces and surface not in self.surfaces:
            return False
        if self.segments and segments.isdisjoint(self.segments):
            return False
        return self.active(at)


def _utc(moment: datetime) -> datetime:
    # a TOML local date-time has no zone: read it as UTC, the zone the service logs in
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


class SeenRule(_Rule):
    """Drop items the user had events of these types with, at most ``max_age_days`` ago, among the recent
    events the feature store keeps (``features.history_length``); ``rerank.filter_seen`` drops every item
    ever seen, of any type and age."""

    kind: Literal["seen"]
    event_types: tuple[EventTypeName, ...] = Field(
        (), description="Event types that count (view, click, rate, purchase); empty: all."
    )
    max_age_days: float | None = Field(
        None, gt=0, description="Only events at most this many days before the request; unset: any age."
    )

    @property
    def event_codes(self) -> tuple[int, ...]:
        return tuple(EVENT_TYPES[name] for name in self.event_types)


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
    factor: float = Field(
        gt=0, le=1000, description="Multiplier of the item's score (at most 1000); below 1 demotes."
    )
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


class PopularityRule(_Rule):
    """Favour popular items: score x (1 + weight x log(1 + n) / log(1 + n_max)), n the item's interactions
    in training (an item added since has none)."""

    kind: Literal["popularity"]
    weight: float = Field(0.2, gt=0, description="Boost of the most popular item: its score x (1 + weight).")


class CapRule(_Rule):
    """At most ``max_per_value`` items sharing a value of ``attribute`` (a genre, a year, a decade) among
    the first ``within`` positions."""

    kind: Literal["cap"]
    attribute: Attribute = Field("genre", description="The item attribute capped: genre, year or decade.")
    max_per_value: int = Field(ge=1, description="Most items with one value of the attribute.")
    within: int | None = Field(None, ge=1, description="Positions the cap covers; unset: the whole list.")


class SpacingRule(_Rule):
    """Spread items that share a value of ``attribute``: at most ``max_per_value`` of them in any
    ``window`` consecutive positions (window 3, max 1: two films of one genre are at least 3 apart)."""

    kind: Literal["spacing"]
    attribute: Attribute = Field("genre", description="The item attribute spaced: genre, year or decade.")
    window: int = Field(ge=2, description="Length of the sliding window of positions.")
    max_per_value: int = Field(1, ge=1, description="Most items with one value in any window.")

    @model_validator(mode="after")
    def _fits(self):
        if self.max_per_value >= self.window:
            raise ValueError("max_per_value must be below window, or the rule never acts")
        return self


class MMRRule(_Rule):
    """Maximal marginal relevance over the two-tower item vectors: each next item maximises
    (1 - lambda) x relevance - lambda x (its highest cosine similarity to the items already chosen)."""

    kind: Literal["mmr"]
    lambda_: float = Field(alias="lambda", ge=0, le=1, description="Weight of diversity against relevance.")


class ExploreRule(_Rule):
    """Fill a share of the positions by sampling: each position is, with probability ``share``, filled by an
    item drawn from the best ``pool`` candidates not yet placed, with probability softmax(score /
    temperature). Seeded by the request id, so a request can be replayed. Each item's propensity (the
    probability this policy put it at its position, given the positions before) is returned, for off-policy
    evaluation of the logged traffic."""

    kind: Literal["explore"]
    share: float = Field(gt=0, le=1, description="Probability that a position is an exploration slot.")
    temperature: float = Field(
        0.1, gt=0, description="Softmax temperature over the scores' common scale [0.1, 1]; higher: flatter."
    )
    pool: int = Field(50, ge=2, description="Exploration draws from this many of the best candidates left.")


class PinRule(_Rule):
    """Put ``item`` at ``position`` (1-based) while the rule is active, unless a filter removed it; with
    ``max_impressions``, at most that many times per user within ``impression_window_days`` (impressions
    counted in the feature store's Redis)."""

    kind: Literal["pin"]
    name: str = Field(
        "", pattern=r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})?$", description="Names its impression counter too."
    )
    item: str = Field(description="External item id.")
    position: int = Field(ge=1, description="1-based position in the returned list.")
    max_impressions: int | None = Field(
        None, ge=1, description="Most times one user is shown the pin within the window; unset: no cap."
    )
    impression_window_days: float = Field(
        1.0, gt=0, description="How long an impression counts against max_impressions."
    )

    @model_validator(mode="after")
    def _counted(self):
        if self.max_impressions is not None and not self.name:
            raise ValueError("a pin with max_impressions needs a name: it names the impression counter")
        return self


class SlotRule(_Rule):
    """A promotion slot: position ``position`` (1-based) holds the best-scored candidate of the promoted
    items (``items``, or of ``genres``, and at least ``min_mean_rating`` when set) unless one is listed at or
    above it already. Candidates only: an item recall did not propose, or a filter removed, is never
    promoted; when none qualifies the slot keeps its item."""

    kind: Literal["slot"]
    position: int = Field(ge=1, description="1-based position in the returned list.")
    items: tuple[str, ...] = Field((), description="External item ids promoted.")
    genres: tuple[str, ...] = Field((), description="Genre names whose items are promoted.")
    min_mean_rating: float | None = Field(
        None, description="Only items of at least this smoothed mean rating are promoted."
    )

    @model_validator(mode="after")
    def _targets(self):
        if not self.items and not self.genres and self.min_mean_rating is None:
            raise ValueError("a slot needs items, genres or min_mean_rating: the items it promotes")
        return self


Rule = Annotated[
    SeenRule
    | BlocklistRule
    | GenreFilterRule
    | MinQualityRule
    | ReleaseWindowRule
    | BoostRule
    | FreshnessRule
    | PopularityRule
    | CapRule
    | SpacingRule
    | MMRRule
    | ExploreRule
    | PinRule
    | SlotRule,
    Field(discriminator="kind"),
]


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field("", description="Shown in responses' model_versions; default: a content hash.")
    segments: tuple[Segment, ...] = Field((), description="User segments rules may be limited to.")
    rules: tuple[Rule, ...] = Field(
        (),
        description="The rules, applied in order within their stage; of several mmr or explore rules that "
        "apply to a request, the first.",
    )

    @model_validator(mode="after")
    def _segments_declared(self):
        names = [segment.name for segment in self.segments]
        if len(set(names)) != len(names):
            raise ValueError(f"segments: a name is declared twice: {names}")
        for position, rule in enumerate(self.rules):
            unknown = sorted(set(rule.segments) - set(names))
            if unknown:
                raise ValueError(
                    f"rules[{position}] ({rule.label}).segments: undeclared segment(s) {unknown}; "
                    f"declared: {names}"
                )
        return self

    def segments_of(self, user: UserTraits) -> frozenset[str]:
        """The names of the segments ``user`` is in."""
        return frozenset(segment.name for segment in self.segments if segment.matches(user))


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
