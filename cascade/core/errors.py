"""Error hierarchy shared by every stage.

Each class names the gRPC status it maps to, so the serving layer can translate them in one interceptor
without this kernel importing grpc.
"""

from __future__ import annotations


class CascadeError(Exception):
    """Base class. ``status`` is the name of a ``grpc.StatusCode`` member."""

    status = "INTERNAL"


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


class ArtifactError(CascadeError):
    """An artifact is missing, corrupt or incompatible with this code."""

    status = "FAILED_PRECONDITION"


class DataError(CascadeError):
    """Input data is missing or not in the expected layout."""

    status = "FAILED_PRECONDITION"
