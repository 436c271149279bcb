"""Admission control: each RPC method computes at most ``workers`` requests at once and lets at most
``queue_size`` more wait; a request beyond that is refused at once (RESOURCE_EXHAUSTED), so an overloaded
server keeps answering the requests it admitted within their deadlines instead of answering everyone late.

Each method has its own limits, and the server's thread pool is sized to hold every method's workers and
queue plus a reserve, so a method whose dependency stalls fills its own slots only: never the threads that
answer another method or a health check."""

from __future__ import annotations

import threading


class MethodAdmission:
    def __init__(self, workers: int, queue_size: int, max_wait_s: float):
        if workers < 1 or queue_size < 0 or max_wait_s <= 0:
            raise ValueError("workers must be >= 1, queue_size >= 0 and max_wait_s > 0")
        self.workers, self.queue_size, self.max_wait_s = workers, queue_size, max_wait_s
        self._slots = threading.Semaphore(workers)
        self._lock = threading.Lock()
        self._waiting = 0

    @property
    def capacity(self) -> int:
        """Requests this method can hold at once, computing or waiting."""
        return self.workers + self.queue_size

    def enter(self, wait_s: float | None = None) -> bool:
        """Take a worker slot, waiting in the queue at most ``wait_s`` (and ``max_wait_s``); False when the
        queue is full or the wait ran out. A True must be paired with ``leave``."""
        if self._slots.acquire(blocking=False):
            return True
        with self._lock:
            if self._waiting >= self.queue_size:
                return False
            self._waiting += 1
        try:
            timeout = self.max_wait_s if wait_s is None else min(wait_s, self.max_wait_s)
            return timeout > 0 and self._slots.acquire(timeout=timeout)
        finally:
            with self._lock:
                self._waiting -= 1

    def leave(self) -> None:
        self._slots.release()
