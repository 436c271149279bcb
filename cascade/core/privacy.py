"""Pseudonyms of user ids: a keyed hash (HMAC-SHA256), so that what a log line, a metric or an audit record
says of a user can be matched by whoever holds the key, and by no one else. The key comes from the config
(a file, or the environment), never from an artifact."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr

from cascade.core.config import ComponentConfig

logger = logging.getLogger(__name__)

MIN_KEY_BYTES = 16


class PrivacyConfig(ComponentConfig):
    pseudonym_key: SecretStr | None = Field(
        None,
        description="The key of user pseudonyms (at least 16 bytes), best given in the environment "
        "(CASCADE_PRIVACY__PSEUDONYM_KEY); pseudonym_key_file is the alternative. Unset: a random key per "
        "process, so pseudonyms cannot be matched across processes or restarts.",
    )
    pseudonym_key_file: Path | None = Field(
        None, description="A file holding the key of user pseudonyms (used when pseudonym_key is unset)."
    )


class Pseudonymiser:
    """``of(user_id)`` -> "p-" and 16 hex digits of HMAC-SHA256(key, the id as text)."""

    def __init__(self, key: bytes):
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a pseudonym key needs at least {MIN_KEY_BYTES} bytes, got {len(key)}")
        self._key = key

    @classmethod
    def from_config(cls, config: PrivacyConfig) -> Pseudonymiser:
        if config.pseudonym_key is not None:
            return cls(config.pseudonym_key.get_secret_value().encode())
        if config.pseudonym_key_file is not None:
            return cls(config.pseudonym_key_file.read_bytes().strip())
        logger.warning(
            "no privacy.pseudonym_key: user pseudonyms in logs use a random key of this process only"
        )
        return cls(secrets.token_bytes(32))

    def of(self, user_id: Any) -> str:
        digest = hmac.new(self._key, str(user_id).encode(), hashlib.sha256).hexdigest()
        return f"p-{digest[:16]}"
