"""Pseudonyms of user ids: a keyed hash (HMAC-SHA256), so that what a Redis key, a log line, an audit record
or a deny-list says of a user can be matched by whoever holds the key, and by no one else. The key comes
from the config (the environment, or a file), never from an artifact.

The same key must reach every process that touches the feature store or the data set's deny-list: the
server, ``cascade features load``, training. Without one configured, a key file is created once at
``privacy.pseudonym_key_file`` (default ``var/pseudonym.key``, beside the embedded Redis) and read from then
on: losing it loses the way from a user id to that user's keys."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr

from cascade.core.config import ComponentConfig

logger = logging.getLogger(__name__)

MIN_KEY_BYTES = 16
MASKED = str(SecretStr("key"))  # how a secret prints: a config printed and read back holds this
PSEUDONYM_HEX = 32  # 128 bits: no two of a hundred million users share one but with odds of about 1e-23
PSEUDONYM = re.compile(rf"p-[0-9a-f]{{{PSEUDONYM_HEX}}}")


class PrivacyConfig(ComponentConfig):
    pseudonym_key: SecretStr | None = Field(
        None,
        description="The key of user pseudonyms (at least 16 bytes), best given in the environment "
        "(CASCADE_PRIVACY__PSEUDONYM_KEY). Unset: the key in pseudonym_key_file.",
    )
    pseudonym_key_file: Path = Field(
        Path("var/pseudonym.key"),
        description="A file holding the key of user pseudonyms, used when pseudonym_key is unset; created "
        "with a random key (readable by its owner only) when absent. Keep it with the deployment's secrets.",
    )


class Pseudonym(str):
    """A user named by pseudonym ("p-" and 32 hex digits) where an id is expected: what an operator copies
    from ``cascade guard list`` or a log line to act on that user."""

    def __new__(cls, text: str) -> Pseudonym:
        if not PSEUDONYM.fullmatch(text):
            raise ValueError(f"a pseudonym is 'p-' and {PSEUDONYM_HEX} hex digits, got {text[:40]!r}")
        return super().__new__(cls, text)


class Pseudonymiser:
    """``of(user_id)`` -> "p-" and 32 hex digits of HMAC-SHA256(key, the id as text): 42 and "42" are one
    user, as everywhere ids are text. ``key_id`` names the key without revealing it, so that data written
    under one key is recognised by a process holding another."""

    def __init__(self, key: bytes):
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a pseudonym key needs at least {MIN_KEY_BYTES} bytes, got {len(key)}")
        self._key = key
        self.key_id = hmac.new(key, b"cascade pseudonym key id", hashlib.sha256).hexdigest()[:16]

    @classmethod
    def from_config(cls, config: PrivacyConfig) -> Pseudonymiser:
        if config.pseudonym_key is not None:
            key = config.pseudonym_key.get_secret_value()
            if key == MASKED:
                raise ValueError(
                    "privacy.pseudonym_key: this is the mask a printed config shows, not a key; give the key"
                )
            return cls(key.encode())
        return cls(_key_file(config.pseudonym_key_file))

    def of(self, user_id: Any) -> str:
        if isinstance(user_id, Pseudonym):
            return str(user_id)
        text = user_id.decode() if isinstance(user_id, bytes) else str(user_id)
        digest = hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()
        return f"p-{digest[:PSEUDONYM_HEX]}"

    def __repr__(self) -> str:  # never the key
        return f"Pseudonymiser(key_id={self.key_id})"


def _key_file(path: Path) -> bytes:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL: of two processes starting together, one creates the key and the other reads it
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_hex(32) + "\n")
                file.flush()
                os.fsync(file.fileno())
            logger.warning(
                "created a new pseudonym key in %s: keep it with the deployment's secrets; without it no "
                "user id leads to that user's feature-store keys or deny-list entry",
                path,
            )
    for _ in range(50):
        key = path.read_bytes().strip()
        if key:
            return key
        time.sleep(0.02)  # another process created the file and is writing the key
    raise RuntimeError(f"the pseudonym key file {path} is empty")
