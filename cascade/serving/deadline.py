"""A request's time budget: the call's gRPC deadline or the request's ``budget_ms``, whichever is nearer,
less a margin for the answer's way back."""

from __future__ import annotations

import math
import time

import grpc


class Deadline:
    def __init__(self, expires_at: float | None):
        """``expires_at``: ``time.monotonic()`` seconds; None for no deadline."""
        self.expires_at = expires_at

    @classmethod
    def of_call(
        cls, context: grpc.ServicerContext | None, budget_ms: int = 0, margin_s: float = 0.0
    ) -> Deadline:
        """``context`` None: a call made in-process (benchmarks), with ``budget_ms`` as its only limit."""
        now = time.monotonic()
        limits = []
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None:
            limits.append(remaining)
        if budget_ms > 0:
            limits.append(budget_ms / 1e3)
        if not limits:
            return cls(None)
        return cls(now + min(limits) - margin_s)

    def remaining_s(self) -> float:
        """Seconds left (may be negative); infinity without a deadline."""
        if self.expires_at is None:
            return math.inf
        return self.expires_at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.remaining_s() <= 0
