"""Page tokens: what they carry comes back, and a token that is malformed, expired or for another request is
INVALID_ARGUMENT naming page_token."""

from __future__ import annotations

import pytest

from cascade.core.errors import InvalidArgumentError
from cascade.serving.paging import PageCursor, decode_token, encode_token, request_digest

NOW = 1_780_000_000.0


def token(served=("1", "2", "3"), issued=NOW, digest=None) -> str:
    digest = digest or request_digest(7, "home", ["Comedy"], [], [5])
    return encode_token(PageCursor(at=NOW - 30, seed=99, served=tuple(served), issued=issued, digest=digest))


def test_a_token_round_trips_and_holds_no_user_id():
    digest = request_digest(123456789, "home", ["Comedy"], [], [5])
    cursor = decode_token(token(digest=digest), digest, NOW + 5, ttl_s=600, max_chars=10_000)
    assert cursor.served == ("1", "2", "3") and cursor.offset == 3
    assert cursor.at == NOW - 30 and cursor.seed == 99
    assert "123456789" not in token(digest=digest)
    # filters in another order are the same request; anything else is another
    assert request_digest(7, "home", ["A", "B"], ["C"], [1, 2]) == request_digest(
        7, "home", ["B", "A"], ["C"], [2, 1]
    )
    assert request_digest(7, "home", [], [], []) != request_digest(8, "home", [], [], [])
    assert request_digest(7, "home", [], [], []) != request_digest(7, "", [], [], [])


def test_hundreds_of_served_ids_fit_a_small_token():
    served = [str(i) for i in range(1000, 1500)]
    digest = request_digest(7, "home", ["Comedy"], [], [5])
    assert len(token(served)) < 3000
    assert decode_token(token(served), digest, NOW, 600, 256 + 200 * 500).served == tuple(served)


@pytest.mark.parametrize(
    ("mangle", "now", "digest", "message"),
    [
        (lambda t: t[:-3] + ("A" if t[-3] != "A" else "B") + t[-2:], NOW, None, "not a token this server"),
        (lambda t: "x" * 20, NOW, None, "not a token this server"),
        (lambda t: "%%%", NOW, None, "not a token this server"),
        (lambda t: t, NOW + 601, None, "expired"),
        (lambda t: t, NOW, request_digest(8, "home", ["Comedy"], [], [5]), "another request"),
        (lambda t: t * 1000, NOW, None, "longer than any token"),
    ],
)
def test_bad_tokens_are_refused_naming_the_field(mangle, now, digest, message):
    digest = digest or request_digest(7, "home", ["Comedy"], [], [5])
    with pytest.raises(InvalidArgumentError, match=message) as err:
        decode_token(mangle(token()), digest, now, ttl_s=600, max_chars=10_000)
    assert err.value.field == "page_token"
