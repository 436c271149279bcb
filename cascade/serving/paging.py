"""Recommend's page tokens: everything the next page needs, carried by the client.

A token holds the time the first page was answered as of (so rules' windows and freshness stay the same
across pages), the exploration seed, the item ids already served (the next page leaves them out, so pages
never repeat an item, whatever the user did between them), when it was issued (tokens expire), and a digest
of the request's user, surface and filters (a token is refused for another request). Nothing in it grants
anything a request could not ask for itself, so it is checked, not signed; it holds no user id.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from dataclasses import dataclass

from cascade.core.errors import InvalidArgumentError

TOKEN_VERSION = 1
_FIELD = "page_token"


@dataclass(frozen=True)
class PageCursor:
    at: float  # unix time every page is answered as of
    seed: int  # the first page's exploration seed
    served: tuple[str, ...]  # item ids of the pages so far, in order
    issued: float  # unix time the token was issued
    digest: str  # of the request it continues

    @property
    def offset(self) -> int:
        return len(self.served)


def request_digest(
    user_id: int | str, surface: str, include: list[str], exclude: list[str], ids: list
) -> str:
    """What binds a token to its request: the user, the surface and the filters, hashed."""
    text = json.dumps([str(user_id), surface, sorted(include), sorted(exclude), sorted(map(str, ids))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_token(cursor: PageCursor) -> str:
    body = json.dumps(
        {
            "v": TOKEN_VERSION,
            "at": cursor.at,
            "seed": cursor.seed,
            "served": list(cursor.served),
            "issued": cursor.issued,
            "digest": cursor.digest,
        },
        separators=(",", ":"),
    ).encode()
    packed = zlib.compress(body, 9)
    check = zlib.crc32(packed).to_bytes(4, "big")
    return base64.urlsafe_b64encode(check + packed).decode().rstrip("=")


def decode_token(token: str, digest: str, now: float, ttl_s: float, max_chars: int) -> PageCursor:
    """The cursor ``token`` carries; InvalidArgumentError naming page_token when it is malformed, expired
    or was issued for another request."""
    if len(token) > max_chars:
        raise InvalidArgumentError(_FIELD, f"longer than any token this server issues ({max_chars} chars)")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        check, packed = raw[:4], raw[4:]
        if len(check) != 4 or zlib.crc32(packed).to_bytes(4, "big") != check:
            raise ValueError("checksum")
        fields = json.loads(zlib.decompress(packed))
        if fields.get("v") != TOKEN_VERSION:
            raise ValueError("version")
        cursor = PageCursor(
            at=float(fields["at"]),
            seed=int(fields["seed"]),
            served=tuple(str(item) for item in fields["served"]),
            issued=float(fields["issued"]),
            digest=str(fields["digest"]),
        )
    except (ValueError, KeyError, TypeError, zlib.error) as exc:
        raise InvalidArgumentError(_FIELD, "not a token this server issued") from exc
    if now - cursor.issued > ttl_s:
        raise InvalidArgumentError(_FIELD, f"expired: tokens last {ttl_s:g} s; ask for the first page again")
    if cursor.digest != digest:
        raise InvalidArgumentError(
            _FIELD, "issued for another request: send the same user, surface and filters as the first page"
        )
    return cursor
