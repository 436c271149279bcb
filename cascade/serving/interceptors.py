"""The one place where errors become gRPC statuses."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from cascade.core.errors import CascadeError
from cascade.serving.metrics import ServerMetrics

logger = logging.getLogger(__name__)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps CascadeError subclasses to their status; anything else is logged and becomes INTERNAL,
    so no request can take the server down or leak a traceback to the caller. With ``metrics``, every RPC's
    status code and server-side time are recorded there."""

    def __init__(self, metrics: ServerMetrics | None = None):
        self.metrics = metrics

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        short_method = method.rsplit("/", 1)[-1]
        inner = handler.unary_unary
        metrics = self.metrics

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return inner(request, context)
            except CascadeError as exc:
                code = exc.status
                context.abort(grpc.StatusCode[exc.status], str(exc))
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

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
