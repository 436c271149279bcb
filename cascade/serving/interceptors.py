"""The one place where an RPC is admitted, given its request id, and its errors become gRPC statuses."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from cascade.core.errors import CascadeError, InvalidArgumentError, OverloadedError
from cascade.core.logs import request_id_var
from cascade.serving.admission import MethodExecutor, current_call_queued_at, current_call_refused
from cascade.serving.metrics import ServerMetrics
from cascade.serving.validation import is_opaque_id

logger = logging.getLogger(__name__)

REQUEST_ID_METADATA = "x-request-id"
RETRY_PUSHBACK_METADATA = "grpc-retry-pushback-ms"  # what a gRPC client's retry policy waits for
_STATUS_DETAILS_METADATA = "grpc-status-details-bin"


class _Undecodable:
    """Stands in for a request whose bytes are not a valid message, so that the handler's wrapper answers
    INVALID_ARGUMENT instead of grpc's INTERNAL with a logged traceback."""

    def __init__(self, message_name: str, error: Exception):
        self.message_name, self.error = message_name, error


def _tolerant(deserializer: Callable[[bytes], Any] | None, message_name: str) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data) if deserializer is not None else data
        except Exception as exc:  # protobuf raises DecodeError, and others on some malformed inputs
            return _Undecodable(message_name, exc)

    return deserialize


class _RichStatus(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple):
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata


def rich_status(error: CascadeError) -> _RichStatus:
    """The status of a CascadeError with google.rpc details: BadRequest naming the field of an
    InvalidArgumentError, RetryInfo (and gRPC's retry pushback) for a retryable one."""
    code = grpc.StatusCode[error.status]
    details = []
    metadata: list[tuple[str, Any]] = []
    if isinstance(error, InvalidArgumentError):
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=str(error))
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if error.retry_after_s is not None:
        delay_ms = max(int(error.retry_after_s * 1000), 1)
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(delay_ms)
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        metadata.append((RETRY_PUSHBACK_METADATA, str(delay_ms)))
    status = status_pb2.Status(code=getattr(code_pb2, error.status), message=str(error))
    for detail in details:
        status.details.add().Pack(detail)
    metadata.append((_STATUS_DETAILS_METADATA, status.SerializeToString()))
    return _RichStatus(code, str(error), tuple(metadata))


def request_id_of(context: grpc.ServicerContext, request: Any) -> str:
    """x-request-id metadata, else the request's own request_id field, else a new id."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA and isinstance(value, str) and is_opaque_id(value):
            return value
    own = getattr(request, "request_id", "")
    if own and is_opaque_id(own):
        return own
    return uuid.uuid4().hex


def _service_method(prefix: str, handler: Any, handler_call_details: grpc.HandlerCallDetails) -> str | None:
    """The short name of a unary-unary method of the service whose paths start with ``prefix``; None for
    anything else (health, reflection, unknown methods)."""
    method = handler_call_details.method
    if handler is None or handler.unary_unary is None or not method.startswith(prefix):
        return None
    return method[len(prefix) :]


class ShedLog:
    """While a method sheds, one log line per ``interval_s`` with the count, not one line per request:
    under overload a line per refusal costs the server the time that shedding is meant to save (the
    metrics count every one)."""

    def __init__(self, interval_s: float = 10.0):
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}

    def shed(self, method: str) -> None:
        now = time.monotonic()
        with self._lock:
            count = self._counts.get(method, 0) + 1
            since = self._logged_at.get(method)
            if since is not None and now - since < self.interval_s:
                self._counts[method] = count
                return
            self._counts[method], self._logged_at[method] = 0, now
        window = "" if since is None else f" in the last {now - since:.1f} s"
        logger.warning("%s: shed %d requests%s (RESOURCE_EXHAUSTED: at capacity)", method, count, window)


class ServiceInterceptor(grpc.ServerInterceptor):
    """For the methods of ``service`` (other services, health and reflection, pass untouched and uncounted):

    - admission: each method runs in its own ``MethodExecutor``; a request that found it full is refused
      with RESOURCE_EXHAUSTED before any work, one that waited past its deadline with DEADLINE_EXCEEDED,
      one that waited past the queue's longest wait with RESOURCE_EXHAUSTED;
    - the request id in ``cascade.core.logs.request_id_var`` for every log line of the request;
    - CascadeError becomes its status with rich details and one log line, bytes that are not a message
      INVALID_ARGUMENT; anything else is a bug: logged with its traceback, INTERNAL to the caller;
    - with ``metrics``, every RPC's status code and server-side time."""

    def __init__(
        self,
        service: str,
        executors: dict[str, MethodExecutor],
        metrics: ServerMetrics | None = None,
    ):
        self.prefix = f"/{service}/"
        self.executors = executors
        self.metrics = metrics
        self.shed_log = ShedLog()
        # the same refusal every time: built once per method, not per shed request
        self._overloaded = {
            method: rich_status(OverloadedError(f"{method}: server at capacity; retry later"))
            for method in executors
        }

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        short_method = _service_method(self.prefix, handler, handler_call_details)
        if short_method is None:
            return handler
        method = handler_call_details.method
        inner = handler.unary_unary
        metrics = self.metrics
        executor = self.executors.get(short_method)

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            token = request_id_var.set(request_id_of(context, request))
            code = "OK"
            try:
                if isinstance(request, _Undecodable):
                    raise InvalidArgumentError("request", f"not a valid {request.message_name} message")
                if executor is not None:
                    queued_at = current_call_queued_at()
                    if queued_at is not None:
                        remaining = context.time_remaining()
                        if remaining is not None and remaining <= 0:
                            code = "DEADLINE_EXCEEDED"
                            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while queued")
                    if current_call_refused() or (
                        queued_at is not None and time.monotonic() - queued_at > executor.max_wait_s
                    ):
                        code = "RESOURCE_EXHAUSTED"
                        if metrics is not None:
                            metrics.shed.labels(short_method).inc()
                        self.shed_log.shed(short_method)
                        context.abort_with_status(self._overloaded[short_method])
                return inner(request, context)
            except CascadeError as exc:
                code = exc.status
                if code in ("UNAVAILABLE", "INTERNAL", "FAILED_PRECONDITION"):
                    logger.warning("%s %s: %s", short_method, code, exc)
                else:
                    logger.info("%s %s: %s", short_method, code, exc)
                context.abort_with_status(rich_status(exc))
            except Exception:
                aborted = context.code()
                if aborted not in (None, grpc.StatusCode.OK):
                    code = aborted.name
                    raise  # the handler aborted on purpose; keep its status
                code = "INTERNAL"
                logger.exception("unhandled error in %s", method)
                context.abort(grpc.StatusCode.INTERNAL, "internal error; see server log")
            finally:
                if metrics is not None:
                    metrics.observe_request(short_method, code, time.perf_counter() - started)
                request_id_var.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=_tolerant(handler.request_deserializer, short_method + " request"),
            response_serializer=handler.response_serializer,
        )


class MethodPoolRouter(grpc.ServerInterceptor):
    """Outermost interceptor: grpc runs a handler in the thread pool named by its behaviour's
    ``experimental_thread_pool``, so the behaviour that the whole chain returns (wrapped by tracing or not)
    is given its method's ``MethodExecutor``. Other methods stay on the server's own pool."""

    def __init__(self, service: str, executors: dict[str, MethodExecutor]):
        self.prefix = f"/{service}/"
        self.executors = executors

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        short_method = _service_method(self.prefix, handler, handler_call_details)
        executor = None if short_method is None else self.executors.get(short_method)
        if executor is None:
            return handler
        behaviour = handler.unary_unary

        def in_method_pool(request: Any, context: grpc.ServicerContext) -> Any:
            return behaviour(request, context)

        in_method_pool.experimental_thread_pool = executor  # type: ignore[attr-defined]
        return grpc.unary_unary_rpc_method_handler(
            in_method_pool,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
