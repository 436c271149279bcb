"""The one place where errors become gRPC statuses."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from cascade.errors import CascadeError

logger = logging.getLogger(__name__)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps CascadeError subclasses to their status; anything else is logged and becomes INTERNAL,
    so no request can take the server down or leak a traceback to the caller."""

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        inner = handler.unary_unary

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return inner(request, context)
            except CascadeError as exc:
                context.abort(grpc.StatusCode[exc.status], str(exc))
            except Exception:
                if context.code() not in (None, grpc.StatusCode.OK):
                    raise  # the handler aborted on purpose; keep its status
                logger.exception("unhandled error in %s", method)
                context.abort(grpc.StatusCode.INTERNAL, "internal error; see server log")

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
