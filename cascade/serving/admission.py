"""Admission control: each RPC method computes at most ``workers`` requests at once and lets at most
``queue_size`` more wait; a request beyond that is refused at once (RESOURCE_EXHAUSTED), so an overloaded
server keeps answering the requests it admitted within their deadlines instead of answering everyone late.

Each method runs in its own thread pool (grpc runs a handler in the pool named by its
``experimental_thread_pool`` attribute), so a method whose dependency stalls fills its own pool only: never
the threads that answer another method or a health check. A waiting request is an entry in its pool's
queue, not a parked thread: every parked thread that wakes takes the GIL from the requests computing, which
showed as latency at moderate load. A request beyond the queue goes to a small shared pool whose only job is
to run the handler in refusing mode; the handler asks ``current_call_refused``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

_REFUSE = "refuse"
_call = threading.local()


def current_call_refused() -> bool:
    """In the handler of a call run by a ``MethodExecutor``: whether it found its method full."""
    return getattr(_call, "admission", None) == _REFUSE


def current_call_queued_at() -> float | None:
    """In the handler of a call admitted by a ``MethodExecutor``: the monotonic time it was queued at;
    None for a refused call or one not run by a ``MethodExecutor``."""
    admission = getattr(_call, "admission", None)
    return admission if isinstance(admission, float) else None


def _run_as(admission: float | str, fn: Callable, args: tuple, kwargs: dict) -> Any:
    _call.admission = admission
    try:
        return fn(*args, **kwargs)
    finally:
        _call.admission = None


class MethodExecutor(futures.ThreadPoolExecutor):
    """The thread pool of one RPC method: ``workers`` threads, at most ``queue_size`` calls waiting; a call
    beyond that runs in ``refusals`` instead, marked so that its handler refuses it at once."""

    def __init__(
        self,
        method: str,
        workers: int,
        queue_size: int,
        max_wait_s: float,
        refusals: futures.ThreadPoolExecutor,
    ):
        if workers < 1 or queue_size < 0 or max_wait_s <= 0:
            raise ValueError("workers must be >= 1, queue_size >= 0 and max_wait_s > 0")
        super().__init__(max_workers=workers, thread_name_prefix=f"cascade-{method}")
        self.method, self.workers, self.queue_size, self.max_wait_s = method, workers, queue_size, max_wait_s
        self._refusals = refusals
        self._admitted_lock = threading.Lock()
        self._admitted = 0

    @property
    def capacity(self) -> int:
        """Calls this method holds at once, computing or waiting."""
        return self.workers + self.queue_size

    @property
    def admitted(self) -> int:
        return self._admitted

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> futures.Future:
        with self._admitted_lock:
            full = self._admitted >= self.capacity
            if not full:
                self._admitted += 1
        if full:
            return self._refusals.submit(_run_as, _REFUSE, fn, args, kwargs)
        try:
            future = super().submit(_run_as, time.monotonic(), fn, args, kwargs)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        return future

    def _release(self, _future: futures.Future | None = None) -> None:
        with self._admitted_lock:
            self._admitted -= 1
