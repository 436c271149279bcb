"""Request validation: every problem is an InvalidArgumentError naming the offending field."""

from __future__ import annotations

import re
import time

from cascade.core.errors import InvalidArgumentError
from cascade.core.schema import MAX_ID_BYTES

_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces
MAX_FUTURE_SKEW_S = 86_400
MAX_AGE_YEARS = 130
MAX_OCCUPATION_CHARS = 64
GENDERS = ("", "F", "M")
_ZIP = re.compile(r"[0-9A-Za-z -]{0,12}")


def parse_id(field: str, value: str) -> str:
    """A user or item id: any non-empty UTF-8 (the wire format guarantees UTF-8) of at most MAX_ID_BYTES
    bytes. Whether the catalogue knows it is the schema's business (``FeatureSchema.item_index``)."""
    if not value:
        raise InvalidArgumentError(field, "must not be empty")
    if len(value) > MAX_ID_BYTES or len(value.encode()) > MAX_ID_BYTES:
        raise InvalidArgumentError(field, f"must be at most {MAX_ID_BYTES} bytes of UTF-8")
    return value


def check_k(k: int, max_k: int) -> int:
    if k <= 0:
        raise InvalidArgumentError("k", f"must be positive, got {k}")
    if k > max_k:
        raise InvalidArgumentError("k", f"must be at most {max_k}, got {k}")
    return k


def parse_exclude_ids(values: list[str], max_count: int) -> list[str]:
    if len(values) > max_count:
        raise InvalidArgumentError("exclude_item_ids", f"at most {max_count} ids allowed, got {len(values)}")
    return [parse_id(f"exclude_item_ids[{i}]", v) for i, v in enumerate(values)]


def is_opaque_id(value: str) -> bool:
    """1-128 printable ASCII characters without spaces: what a request id or an event id may be."""
    return bool(_REQUEST_ID.fullmatch(value))


def check_request_id(value: str) -> str:
    if value and not is_opaque_id(value):
        raise InvalidArgumentError("request_id", "must be 1-128 printable ASCII characters without spaces")
    return value


def check_demographics(
    gender: str, age: int, occupation: str, zip_code: str = ""
) -> tuple[str, int, str, str]:
    gender = gender.upper()
    if gender not in GENDERS:
        raise InvalidArgumentError("demographics.gender", f"must be 'F', 'M' or empty, got {gender[:10]!r}")
    if not 0 <= age <= MAX_AGE_YEARS:
        raise InvalidArgumentError("demographics.age", f"must be 0 (unknown) to {MAX_AGE_YEARS}, got {age}")
    if len(occupation) > MAX_OCCUPATION_CHARS:
        raise InvalidArgumentError("demographics.occupation", f"at most {MAX_OCCUPATION_CHARS} characters")
    if not _ZIP.fullmatch(zip_code):
        raise InvalidArgumentError(
            "demographics.zip_code", "must be at most 12 letters, digits, spaces or hyphens"
        )
    return gender, age, occupation, zip_code


def check_timestamp(timestamp: int, now: float | None = None) -> int:
    now = time.time() if now is None else now
    if timestamp == 0:
        return int(now)
    if timestamp < 0:
        raise InvalidArgumentError("timestamp", f"must be unix seconds >= 0, got {timestamp}")
    if timestamp > now + MAX_FUTURE_SKEW_S:
        raise InvalidArgumentError("timestamp", f"{timestamp} is more than a day in the future")
    return timestamp


MAX_BUDGET_MS = 600_000


def check_budget_ms(budget_ms: int) -> int:
    if not 0 <= budget_ms <= MAX_BUDGET_MS:
        raise InvalidArgumentError("budget_ms", f"must be 0 (none) to {MAX_BUDGET_MS}, got {budget_ms}")
    return budget_ms


def check_event_id(value: str) -> str:
    if value and not is_opaque_id(value):
        raise InvalidArgumentError("event_id", "must be 1-128 printable ASCII characters without spaces")
    return value


def check_rating(rating: float, is_rating_event: bool, rating_range: tuple[float, float]) -> float | None:
    """The rating of a RATE event (required, within the served data set's ``rating_range``); other events
    carry none."""
    if not is_rating_event:
        if rating != 0:
            raise InvalidArgumentError("rating", "only EVENT_TYPE_RATE carries a rating")
        return None
    low, high = rating_range
    if not low <= rating <= high:  # NaN fails this too
        raise InvalidArgumentError(
            "rating", f"a RATE event needs a rating from {low:g} to {high:g}, got {rating}"
        )
    return float(rating)


_SURFACE = re.compile(r"[A-Za-z0-9_.-]{0,64}")
MAX_REQUEST_SKEW_S = 86_400


def check_surface(value: str) -> str:
    if not _SURFACE.fullmatch(value):
        raise InvalidArgumentError("surface", "must be at most 64 letters, digits, '_', '-' or '.'")
    return value


def check_request_time(timestamp: int, now: float | None = None) -> float | None:
    """The unix time a request is answered as of, None for now; at most a day from the server's clock."""
    if timestamp == 0:
        return None
    now = time.time() if now is None else now
    if abs(timestamp - now) > MAX_REQUEST_SKEW_S:
        raise InvalidArgumentError(
            "timestamp", f"must be within a day of the server's clock, got {timestamp}"
        )
    return float(timestamp)


def parse_genres(field: str, names: list[str], known: tuple[str, ...]) -> tuple[int, ...]:
    """Genre names -> the catalogue's genre ids (1-based positions in ``known``)."""
    ids = []
    for position, name in enumerate(names):
        if name not in known:
            raise InvalidArgumentError(
                f"{field}[{position}]", f"unknown genre {name[:40]!r}; the catalogue's: {', '.join(known)}"
            )
        ids.append(known.index(name) + 1)
    return tuple(ids)


def check_page_size(page_size: int, max_k: int) -> int:
    if not 0 <= page_size <= max_k:
        raise InvalidArgumentError("page_size", f"must be 0 (no paging) to {max_k}, got {page_size}")
    return page_size


MAX_TITLE_CHARS = 512
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_KEY_CHARS, MAX_ATTRIBUTE_VALUE_CHARS = 64, 256


def check_title(title: str) -> str:
    if len(title) > MAX_TITLE_CHARS:
        raise InvalidArgumentError("title", f"at most {MAX_TITLE_CHARS} characters")
    return title


def check_year(year: int) -> int:
    if year != 0 and not 1800 <= year <= 2200:
        raise InvalidArgumentError("year", f"must be 0 (unknown) or 1800-2200, got {year}")
    return year


def check_attributes(attributes: dict[str, str]) -> dict[str, str]:
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidArgumentError("attributes", f"at most {MAX_ATTRIBUTES} entries")
    for key, value in attributes.items():
        if not key or len(key) > MAX_ATTRIBUTE_KEY_CHARS:
            raise InvalidArgumentError("attributes", f"keys must be 1-{MAX_ATTRIBUTE_KEY_CHARS} characters")
        if len(value) > MAX_ATTRIBUTE_VALUE_CHARS:
            raise InvalidArgumentError(
                f"attributes[{key[:40]!r}]", f"at most {MAX_ATTRIBUTE_VALUE_CHARS} characters"
            )
    return attributes
