"""The guard on RecordEvent: rate limits per user, client and item; blocks; the live score of a user's
ratings; quarantine of a flagged user's events; and the operators' view of it all.

Per event: the client's and the item's sliding windows are counted first (one Redis call each, in one
round trip), then the user's window, block and flag are checked in the recording script itself, atomically
with the write. After a rating is recorded, a user with at least ``guard.live_min_ratings`` ratings is
scored now and then (every LIVE_SCORE_EVERY ratings, so the cost of reading the profile is spread) by the
published detector (`cascade train guard`); from ``guard.live_quarantine_score`` on, the user is flagged
and their later events are quarantined: stored apart and kept out of their history, seen set and ratings
(so out of their recommendations, and of anything mined from the store) until an operator clears them
(`cascade guard clear`), which replays them into the history, or discards them.

Every decision (a flag, a block, a clearance) goes to the audit stream in Redis and to the log
``cascade.guard.audit``, which names users by pseudonym only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pandas as pd

from cascade.core.artifacts import ArtifactStore
from cascade.core.errors import BlockedError, RateLimitedError
from cascade.core.privacy import Pseudonymiser
from cascade.core.schema import EVENT_TYPES
from cascade.guard.config import GuardConfig
from cascade.guard.detector import GUARD, ShillingDetector
from cascade.serving.feature_store import keys
from cascade.serving.feature_store.base import (
    BLOCKED,
    FLAGGED,
    LIMITED,
    RECORDED,
    EventChecks,
    GuardFlag,
    HistoryEvent,
    RecordResult,
)
from cascade.serving.feature_store.resilient import ResilientFeatureStore

logger = logging.getLogger(__name__)
audit_logger = logging.getLogger("cascade.guard.audit")

RATE_EVENT = EVENT_TYPES["rate"]
LIVE_SCORE_EVERY = 5  # ratings between two live scores of one user
DETECTOR = "detector"
DETECTOR_CHECK_S = 5.0  # how often the artifact store is asked for a newer detector


class EventGuard:
    def __init__(
        self,
        config: GuardConfig,
        store: ResilientFeatureStore,
        artifacts: ArtifactStore,
        history_length: int,
        pseudonyms: Pseudonymiser,
        on_event: Callable[[str], None] | None = None,
        on_flag: Callable[[str], None] | None = None,
        detector: ShillingDetector | None = None,
    ):
        """``detector``: score with this one, never looking for a published one (an evaluation's)."""
        self.config = config
        self.store = store
        self.artifacts = artifacts
        self.history_length = history_length
        self.pseudonyms = pseudonyms
        self._on_event = on_event or (lambda outcome: None)
        self._on_flag = on_flag or (lambda by: None)
        self._detector = detector
        self._detector_version: str | None = None
        self._checked_at = float("inf") if detector is not None else float("-inf")
        self._lock = threading.Lock()
        # with guard.online off no rate is limited, but a block or a flag an operator set still holds
        self.checks = EventChecks(
            config.user_events_per_window if config.online else 0,
            config.rate_window_s,
            config.quarantine_length,
        )

    def admit(self, client: str, item_id: int | str) -> None:
        """Count the event against the client's and the item's windows, or raise RateLimitedError."""
        if not self.config.online:
            return
        gc = self.config
        windows = [
            ("client", keys.rate_key("client", client), gc.client_events_per_window),
            ("item", keys.rate_key("item", item_id), gc.item_events_per_window),
        ]
        waits = self.store.consume_rates([(key, limit, gc.rate_window_s) for _, key, limit in windows])
        if waits is None:
            # the counters' node cannot answer (on a cluster, it may be another than the user's): the event
            # goes on unlimited by client and item rather than be refused; the user's own limit still holds
            self._on_event("unlimited")
            return
        for (kind, _, limit), wait in zip(windows, waits):
            if wait is not None:
                self._on_event(f"limited_{kind}")
                raise RateLimitedError(
                    f"this {kind} recorded more than {limit} events in {gc.rate_window_s:g} s; retry later",
                    retry_after_s=max(wait, 0.05),
                )

    def settle(self, user_id: int | str, event: HistoryEvent, result: RecordResult) -> None:
        """Act on the recording's outcome: refuse (raise) a blocked user's or a rate-limited one's, score
        the user after a recorded rating."""
        if result.duplicate:
            return
        if result.outcome == BLOCKED:
            self._on_event(BLOCKED)
            raise BlockedError("this user is blocked by the guard; events are refused until cleared")
        if result.outcome == LIMITED:
            self._on_event("limited_user")
            raise RateLimitedError(
                f"this user recorded more than {self.config.user_events_per_window} events in "
                f"{self.config.rate_window_s:g} s; retry later",
                retry_after_s=max(result.retry_after_s, 0.05),
            )
        self._on_event(result.outcome)
        recorded_rating = result.outcome == RECORDED and event.event_type == RATE_EVENT
        if self.config.online and recorded_rating and self._due(result.ratings):
            self._score(user_id)

    def _due(self, ratings: int) -> bool:
        minimum = self.config.live_min_ratings
        return ratings >= minimum and (ratings - minimum) % LIVE_SCORE_EVERY == 0

    def _score(self, user_id: int | str) -> None:
        detector = self.detector()
        if detector is None:
            return
        try:
            ratings = self.store.backend.ratings(user_id)
        except Exception as exc:  # a lost score is made up at the next one; the event is stored already
            logger.warning("live guard score skipped: %s", type(exc).__name__)
            return
        profile = pd.DataFrame({"user_id": 0, "item_id": list(ratings), "rating": list(ratings.values())})
        score = float(detector.score_profiles(profile).iloc[0])
        if score >= self.config.live_quarantine_score:
            reason = f"live profile of {len(ratings)} ratings scored {score:.3f} by the shilling detector"
            self.decide(user_id, FLAGGED, reason, score, DETECTOR)

    def decide(self, user_id: int | str, state: str, reason: str, score: float, by: str) -> tuple[bool, str]:
        """Flag or block ``user_id`` (an operator's decision when ``by`` names a key); audited. -> (whether
        it changed, the state before or "")."""
        applied, previous = self.store.write(
            "guard state not changed",
            self.store.backend.set_guard_state,
            user_id,
            state,
            reason,
            score,
            by,
            user=user_id,
        )
        if applied:
            self._on_flag(DETECTOR if by == DETECTOR else "operator")
            audit_logger.info(
                "guard %s", state, extra={"user": self.pseudonyms.of(user_id), "action": state,
                                          "reason": reason, "score": round(score, 4), "by": by},
            )  # fmt: skip
        return applied, previous

    def clear(self, user_id: int | str, discard: bool, by: str) -> tuple[str | None, int]:
        """Lift a flag or block; the quarantined events join the history (or are dropped). Audited."""
        state, count = self.store.write(
            "guard state not changed",
            self.store.backend.clear_guard,
            user_id,
            self.history_length,
            discard,
            user=user_id,
        )
        if state is not None:
            action = "discarded" if discard else "cleared"
            audit_logger.info(
                "guard %s", action, extra={"user": self.pseudonyms.of(user_id), "action": action,
                                           "lifted": state, "events": count, "by": by},
            )  # fmt: skip
        return state, count

    def flags(self, limit: int) -> list[GuardFlag]:
        return self.store.write("flags not read", self.store.backend.guard_flags, limit)

    def detector(self) -> ShillingDetector | None:
        """The current published detector, loaded again when a newer one is published (checked at most
        every few seconds); None when there is none."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked_at < DETECTOR_CHECK_S:
                return self._detector
            self._checked_at = now
            ref = self.artifacts.current(GUARD)
            if ref is None or ref.version == self._detector_version:
                return self._detector
            try:
                ref.verify()
                detector = ShillingDetector.read(ref.path, bool(ref.manifest.get("integer_item_ids", True)))
            except Exception as exc:
                logger.error("guard detector %s refused: %s", ref.version, exc)
                self._detector_version = ref.version
                return self._detector
            self._detector, self._detector_version = detector, ref.version
            logger.info("guard detector %s loaded", ref.version)
            return detector
