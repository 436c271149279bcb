"""API keys: stored as digests, scoped, expiring, rotated by rewriting the file; the keys command line."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from cascade.core.errors import ConfigError
from cascade.serving.auth import (
    KeyEntry,
    KeyRing,
    is_loopback,
    key_digest,
    key_of,
    new_key,
    parse_keys,
    parse_keys_environment,
    render_keys,
)


def entry(key: str, key_id: str = "app", scopes=("recommend",), expires=None) -> KeyEntry:
    return KeyEntry(id=key_id, sha256=key_digest(key), scopes=scopes, expires=expires)


def test_a_key_ring_knows_its_keys_by_digest_their_scopes_and_expiry(tmp_path):
    live, old, stranger = new_key(), new_key(), new_key()
    assert live != old and live.startswith("csk_") and len(live) > 40
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    path = tmp_path / "keys.toml"
    path.write_text(
        render_keys([entry(live, scopes=("recommend", "admin")), entry(old, "old", expires=past)])
    )
    assert live not in path.read_text()  # only digests are stored
    ring = KeyRing(path, None, reload_interval_s=0)
    caller = ring.caller(live)
    assert caller.key_id == "app" and caller.scopes == {"recommend", "admin"}
    assert ring.caller(old) is None and ring.caller(stranger) is None and ring.caller("") is None
    # rotation: a rewritten file is read again at the next call; a bad one is refused, the keys stay
    path.write_text(render_keys([entry(stranger, "new")]))
    assert ring.caller(live) is None and ring.caller(stranger).key_id == "new"
    path.write_text("[[keys]]\nid = 'broken'\n")
    assert ring.caller(stranger).key_id == "new"
    with pytest.raises(ConfigError, match=r"keys\.0\.sha256"):
        KeyRing(path, None)  # a server never starts on a bad file


def test_keys_from_the_environment_and_bad_entries_named():
    key = new_key()
    ring = KeyRing(None, f"ops:{key_digest(key)}:admin+record_event", reload_interval_s=0)
    assert ring.configured and ring.caller(key).scopes == {"admin", "record_event"}
    assert not KeyRing(None, None).configured
    with pytest.raises(ConfigError, match=r"CASCADE_API_KEYS\[0\]\.scopes"):
        parse_keys_environment(f"ops:{key_digest(key)}:everything")
    with pytest.raises(ConfigError, match="declared twice"):
        parse_keys(render_keys([entry(key), entry(new_key())]), "keys file")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_keys("[[keys", "keys file")


def test_the_key_is_read_from_either_header_and_loopback_is_told_apart():
    assert key_of((("authorization", "Bearer abc"),)) == "abc"
    assert key_of((("authorization", "bearer  abc "),)) == "abc"
    assert key_of((("x-api-key", "abc"),)) == "abc"
    assert key_of((("authorization", "Basic abc"),)) is None and key_of(None) is None
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")


def test_the_command_line_creates_lists_and_revokes_keys_showing_a_key_once(tmp_path):
    path = tmp_path / "keys.toml"
    cli = [sys.executable, "-m", "cascade.cli", "keys"]
    env = {**os.environ, "CASCADE_LOG_LEVEL": "WARNING"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args, "--file", str(path)], capture_output=True, text=True, env=env)

    made = run("create", "--id", "app", "--scope", "recommend", "--scope", "record_event")
    key = made.stdout.strip().splitlines()[-1]
    assert made.returncode == 0 and key.startswith("csk_") and key not in path.read_text()
    assert KeyRing(path, None).caller(key).scopes == {"recommend", "record_event"}
    assert run("create", "--id", "app", "--scope", "admin").returncode == 1  # the id is taken
    assert "--scopes" in run("create", "--id", "x", "--scope", "root").stderr
    assert run("list").stdout.strip() == "app: recommend, record_event"
    assert run("revoke", "--id", "app").returncode == 0 and KeyRing(path, None).caller(key) is None
    assert run("revoke", "--id", "app").returncode == 1
