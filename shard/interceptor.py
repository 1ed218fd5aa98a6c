"""The one place exceptions become gRPC status codes (TGI sends ``details = str(exception)``)."""

from __future__ import annotations

import logging

import grpc

from shard.errors import BatchNotFound, InvalidRequest

log = logging.getLogger(__name__)


def status_of(err: Exception) -> grpc.StatusCode:
    if isinstance(err, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(err, BatchNotFound):
        return grpc.StatusCode.NOT_FOUND
    return grpc.StatusCode.INTERNAL


class ExceptionInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary-unary handler: an exception aborts the call with a clear status and message."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner, method = handler.unary_unary, handler_call_details.method

        async def guarded(request, context):
            try:
                return await inner(request, context)
            except Exception as err:  # noqa: BLE001 - every error must reach the caller as a status
                code = status_of(err)
                if code == grpc.StatusCode.INTERNAL:
                    log.exception("%s failed", method)
                    message = f"{type(err).__name__}: {err}"
                else:
                    message = str(err)
                await context.abort(code, message)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
