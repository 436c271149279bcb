"""A circuit breaker for calls to a dependency, shared by every RPC thread.

Written here rather than taken from ``pybreaker``: pybreaker holds one lock for the whole wrapped call, so a
breaker shared by the server's threads would serialise every Redis round trip (and a stalled one would
stall them all); its maintainers declined the changes that would lift that. This one holds its lock only to
read or change its state.

States: CLOSED (calls pass; ``failure_threshold`` consecutive failures open it), OPEN (calls are refused at
once, without touching the dependency, for ``reset_timeout_s``), HALF_OPEN (one trial call at a time passes;
its success closes the breaker, its failure opens it again for another ``reset_timeout_s``).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class BreakerState(enum.Enum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        failure_threshold: int = 3,
        reset_timeout_s: float = 1.0,
        on_change: Callable[[BreakerState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if failure_threshold < 1 or reset_timeout_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and reset_timeout_s > 0")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False

    @property
    def state(self) -> BreakerState:
        with self._lock:
            if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_timeout_s:
                return BreakerState.HALF_OPEN
            return self._state

    def retry_after_s(self) -> float:
        """Seconds until the breaker lets a trial call through (0 when closed)."""
        with self._lock:
            if self._state is not BreakerState.OPEN:
                return 0.0
            return max(self.reset_timeout_s - (self._clock() - self._opened_at), 0.0)

    def allow(self) -> bool:
        """Whether a call may go to the dependency now. A True in HALF_OPEN makes the caller the trial: it
        must report its outcome with ``succeeded`` or ``failed``."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN:
                if self._clock() - self._opened_at < self.reset_timeout_s:
                    return False
                self._set(BreakerState.HALF_OPEN)
            if self._trial_running:
                return False
            self._trial_running = True
            return True

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            self._trial_running = False
            if self._state is not BreakerState.CLOSED:
                self._set(BreakerState.CLOSED)

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            was_trial, self._trial_running = self._trial_running, False
            if was_trial or self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
                self._opened_at = self._clock()
                if self._state is not BreakerState.OPEN:
                    self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        """Called with the lock held."""
        previous, self._state = self._state, state
        if state is BreakerState.CLOSED:
            logger.info("circuit %s closed: the dependency answers again", self.name)
        elif state is BreakerState.OPEN:
            logger.warning(
                "circuit %s open after %d failure(s): calls refused for %.1f s",
                self.name,
                self._failures,
                self.reset_timeout_s,
            )
        if self._on_change is not None and previous is not state:
            self._on_change(state)
