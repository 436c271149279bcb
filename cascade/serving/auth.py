"""Who may call what: API keys with scopes, checked in one interceptor before any other work.

A key is a random token (``cascade keys create`` makes one and shows it once). Only its SHA-256 is kept, in
the keys file (``serving.auth.api_keys_path``) or the environment (``CASCADE_API_KEYS``), so neither holds
a key that works. The file is read again when it changes (rotation without a restart): a key added works,
a key removed stops working, within ``serving.auth.reload_interval_s``. Keys are never logged; their ids
are.

A call carries its key as ``authorization: Bearer <key>`` (or ``x-api-key: <key>``) metadata. No key or an
unknown or expired one: UNAUTHENTICATED. A valid key without the method's scope: PERMISSION_DENIED. Health
and reflection stay open, for balancers and tools.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import grpc
import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cascade.core.artifacts import atomic_write_bytes
from cascade.core.errors import ConfigError

logger = logging.getLogger(__name__)

Scope = Literal["recommend", "record_event", "admin"]
SCOPES: tuple[str, ...] = ("recommend", "record_event", "admin")
KEY_PREFIX = "csk_"
KEYS_ENVIRONMENT = "CASCADE_API_KEYS"

# the scope each method needs; a method not listed (health, reflection) is open to every caller
METHOD_SCOPES: dict[str, str] = {
    "/cascade.v1.Recommender/Recommend": "recommend",
    "/cascade.v1.Recommender/SimilarItems": "recommend",
    "/cascade.v1.Recommender/RecordEvent": "record_event",
    "/cascade.v1.Recommender/GetCustomerProfile": "admin",
    "/cascade.v1.CatalogueAdmin/UpsertItem": "admin",
    "/cascade.v1.CatalogueAdmin/DeleteItem": "admin",
    "/cascade.v1.GuardAdmin/ListFlags": "admin",
    "/cascade.v1.GuardAdmin/ClearUser": "admin",
    "/cascade.v1.GuardAdmin/BlockUser": "admin",
    "/cascade.v1.PrivacyAdmin/ForgetUser": "admin",
}
# a method of the API this map does not name needs the admin scope: a new method is never open by omission
API_PREFIX = "/cascade.v1."


class KeyEntry(BaseModel):
    """One key as stored: never the key itself."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Names the key in logs.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the key.")
    scopes: tuple[Scope, ...] = Field(min_length=1, description="What the key may call.")
    expires: datetime | None = Field(None, description="After this time the key no longer works.")


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry] = Field(default_factory=list)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key: 32 bytes of the OS's randomness, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_keys(text: str, source: str) -> list[KeyEntry]:
    """The entries of a keys file; ConfigError naming the entry and field when invalid."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        entries = KeysFile.model_validate(raw).keys
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise ConfigError(f"{source}: {where}: {problem['msg']}") from exc
    seen: set[str] = set()
    for entry in entries:
        if entry.id in seen:
            raise ConfigError(f"{source}: key id {entry.id!r} is declared twice")
        seen.add(entry.id)
    return entries


def parse_keys_environment(value: str) -> list[KeyEntry]:
    """``id:sha256:scope+scope;id:sha256:scope``, for deployments that keep secrets in the environment."""
    entries = []
    for number, part in enumerate(p for p in value.split(";") if p.strip()):
        fields = part.strip().split(":")
        if len(fields) != 3:
            raise ConfigError(f"{KEYS_ENVIRONMENT}[{number}]: expected id:sha256:scopes")
        try:
            entries.append(KeyEntry(id=fields[0], sha256=fields[1], scopes=tuple(fields[2].split("+"))))
        except ValidationError as exc:
            problem = exc.errors()[0]
            raise ConfigError(f"{KEYS_ENVIRONMENT}[{number}].{problem['loc'][0]}: {problem['msg']}") from exc
    return entries


@dataclass(frozen=True)
class Caller:
    """Who a call came from, once its key checked out."""

    key_id: str
    scopes: frozenset[str]


class KeyRing:
    """The keys in force: the file's (read again when it changes) and the environment's. A file that
    becomes invalid is refused with a log line and the keys before it stay in force, as with rules."""

    def __init__(self, path: Path | None, environment: str | None, reload_interval_s: float = 1.0):
        self.path = path
        self.reload_interval_s = reload_interval_s
        self._fixed = parse_keys_environment(environment) if environment else []
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._by_digest: dict[str, KeyEntry] = {}
        self._load(initial=True)

    @property
    def configured(self) -> bool:
        return self.path is not None or bool(self._fixed)

    def _load(self, initial: bool = False) -> None:
        entries = list(self._fixed)
        stamp = None
        if self.path is not None:
            try:
                stat = self.path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
                if stamp == self._stamp:
                    return
                entries += parse_keys(self.path.read_text(encoding="utf-8"), f"keys file {self.path}")
            except (OSError, UnicodeDecodeError, ConfigError) as exc:
                if initial:
                    raise ConfigError(f"keys file {self.path}: {exc}") from exc
                if stamp != self._stamp:
                    logger.error("refused the keys file; the keys before it stay in force: %s", exc)
                    self._stamp = stamp
                return
        self._by_digest = {entry.sha256: entry for entry in entries}
        self._stamp = stamp
        if not initial:
            logger.info("keys file read again: %d keys in force", len(self._by_digest))

    def _refresh(self) -> None:
        now = time.monotonic()
        if self.path is None or now - self._checked < self.reload_interval_s:
            return
        with self._lock:
            if now - self._checked >= self.reload_interval_s:
                self._checked = now
                self._load()

    def caller(self, key: str, now: datetime | None = None) -> Caller | None:
        """The caller ``key`` identifies, None when no key in force is it (or it has expired)."""
        self._refresh()
        entry = self._by_digest.get(key_digest(key))
        if entry is None:
            return None
        if entry.expires is not None and (now or datetime.now(entry.expires.tzinfo)) >= entry.expires:
            return None
        return Caller(entry.id, frozenset(entry.scopes))


def key_of(metadata: tuple | None) -> str | None:
    """The key a call's metadata carries: ``authorization: Bearer <key>`` or ``x-api-key``."""
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str) and value[:7].lower() == "bearer ":
            return value[7:].strip()
        if name == "x-api-key" and isinstance(value, str):
            return value.strip()
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses a call to a scoped method before it reaches admission or a handler: UNAUTHENTICATED without
    a key in force, PERMISSION_DENIED without the method's scope."""

    def __init__(self, keys: KeyRing, on_refusal: Callable[[str, str], None] | None = None):
        self.keys = keys
        self.on_refusal = on_refusal

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        scope = METHOD_SCOPES.get(method, "admin" if method.startswith(API_PREFIX) else None)
        if scope is None:
            return continuation(handler_call_details)
        key = key_of(handler_call_details.invocation_metadata)
        caller = self.keys.caller(key) if key else None
        if caller is None:
            reason = "no API key" if not key else "an unknown or expired API key"
            return self._refuse(method, grpc.StatusCode.UNAUTHENTICATED, f"{reason}: send a key in force "
                                "as 'authorization: Bearer <key>' metadata", "unauthenticated")  # fmt: skip
        if scope not in caller.scopes:
            logger.warning("key %s without scope %s called %s", caller.key_id, scope, method)
            return self._refuse(
                method, grpc.StatusCode.PERMISSION_DENIED, f"this key lacks the {scope!r} scope", "forbidden"
            )
        return continuation(handler_call_details)

    def _refuse(self, method: str, code: grpc.StatusCode, message: str, reason: str) -> grpc.RpcMethodHandler:
        if self.on_refusal is not None:
            self.on_refusal(method, reason)

        def refuse(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(code, message)

        # no deserializer: the request stays bytes, never decoded, so a refused caller's bytes cost nothing
        return grpc.unary_unary_rpc_method_handler(refuse)


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def keyring_of(path: Path | None, reload_interval_s: float) -> KeyRing:
    return KeyRing(path, os.environ.get(KEYS_ENVIRONMENT) or None, reload_interval_s)


def render_keys(entries: list[KeyEntry]) -> str:
    """A keys file holding ``entries`` (ids and scopes are restricted to characters TOML takes as they
    are)."""
    lines = [
        "# API keys in force (cascade keys create / revoke): SHA-256 digests, never the keys themselves.",
        "",
    ]
    for entry in entries:
        lines += ["[[keys]]", f'id = "{entry.id}"', f'sha256 = "{entry.sha256}"']
        lines.append("scopes = [" + ", ".join(f'"{scope}"' for scope in entry.scopes) + "]")
        if entry.expires is not None:
            lines.append(f"expires = {entry.expires.isoformat()}")
        lines.append("")
    return "\n".join(lines)


def read_keys_file(path: Path) -> list[KeyEntry]:
    """The file's entries; none when it does not exist yet."""
    if not path.exists():
        return []
    return parse_keys(path.read_text(encoding="utf-8"), f"keys file {path}")


def write_keys_file(path: Path, entries: list[KeyEntry]) -> None:
    """Replace the file by one holding ``entries``, whole or not at all: servers never read half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, render_keys(entries).encode())
