"""Error hierarchy shared by every stage.

Each class names the gRPC status it maps to, so the serving layer can translate them in one interceptor
without this kernel importing grpc.
"""

from __future__ import annotations


class CascadeError(Exception):
    """Base class. ``status`` is the name of a ``grpc.StatusCode`` member; ``retry_after_s``, when set,
    tells a client how long to wait before retrying (sent as gRPC retry pushback and RetryInfo)."""

    status = "INTERNAL"
    retry_after_s: float | None = None


class InvalidArgumentError(CascadeError):
    """A request field is malformed or out of range; the message starts with the field's name."""

    status = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFoundError(CascadeError):
    status = "NOT_FOUND"


class NotReadyError(CascadeError):
    """Models or index are not loaded yet."""

    status = "UNAVAILABLE"
    retry_after_s = 1.0


class DependencyUnavailableError(CascadeError):
    """A dependency (the feature store) is down or too slow; retryable after ``retry_after_s``."""

    status = "UNAVAILABLE"

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OverloadedError(CascadeError):
    """More requests than the server admits at once; shed before any work."""

    status = "RESOURCE_EXHAUSTED"
    retry_after_s = 0.1


class RateLimitedError(CascadeError):
    """A caller, a user or an item went past its rate limit (the guard's sliding windows); retryable after
    ``retry_after_s``."""

    status = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BlockedError(CascadeError):
    """An operator blocked this user: their events are refused until cleared (cascade guard clear)."""

    status = "PERMISSION_DENIED"


class DeadlineExceededError(CascadeError):
    """The caller's deadline passed before the answer was ready; the work was dropped."""

    status = "DEADLINE_EXCEEDED"


class ArtifactError(CascadeError):
    """An artifact is missing, corrupt or incompatible with this code."""

    status = "FAILED_PRECONDITION"


class DataError(CascadeError):
    """Input data is missing or not in the expected layout."""

    status = "FAILED_PRECONDITION"


class ConfigError(CascadeError):
    """An operator's file (the rules file) is unreadable or invalid; the message names the entry and field."""

    status = "FAILED_PRECONDITION"
