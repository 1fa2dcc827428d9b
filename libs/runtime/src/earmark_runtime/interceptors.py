"""The server interceptor every service runs: a trace span per call, and dependency
failures turned into UNAVAILABLE with a message a client can act on (retry),
instead of UNKNOWN with a driver's internals."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import psycopg
from nats.errors import Error as NatsError
from opentelemetry.trace import SpanKind, Status, StatusCode

from .auth import KeyStore
from .telemetry import extract_context, tracer

log = logging.getLogger(__name__)

# Failures of a dependency, not of the request: the same call can succeed later.
_DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    NatsError,
    ConnectionError,
    TimeoutError,
)


def _dependency_message(exc: BaseException) -> str:
    if isinstance(exc, psycopg.OperationalError):
        return "the database is unavailable; retry shortly"
    if isinstance(exc, NatsError):
        return "the message bus is unavailable; retry shortly"
    return f"a dependency is unavailable ({type(exc).__name__}); retry shortly"


_STATUS = {
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
}


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, keys: KeyStore | None = None) -> None:
        self._keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metadata = {
            k: v for k, v in (handler_call_details.invocation_metadata or ()) if isinstance(v, str)
        }
        parent = extract_context(metadata)
        decision = self._keys.authorize(method, metadata) if self._keys else None
        if decision is not None and not decision.allowed:
            who = decision.principal.name if decision.principal else "anonymous"
            log.warning("denied %s to %s: %s", method, who, decision.message)

        async def check(ctx: grpc.aio.ServicerContext) -> None:
            if decision is not None and not decision.allowed:
                await ctx.abort(_STATUS[decision.code], decision.message)

        def wrap_unary(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def run(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
                with tracer().start_as_current_span(
                    method, context=parent, kind=SpanKind.SERVER
                ) as span:
                    span.set_attribute("rpc.system", "grpc")
                    await check(ctx)
                    try:
                        return await fn(request, ctx)
                    except _DEPENDENCY_ERRORS as exc:
                        log.warning("%s: dependency failure: %s", method, exc)
                        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                        await ctx.abort(grpc.StatusCode.UNAVAILABLE, _dependency_message(exc))

            return run

        def wrap_stream(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def run(request: Any, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                with tracer().start_as_current_span(method, context=parent, kind=SpanKind.SERVER):
                    await check(ctx)
                    try:
                        async for item in fn(request, ctx):
                            yield item
                    except _DEPENDENCY_ERRORS as exc:
                        log.warning("%s: dependency failure: %s", method, exc)
                        await ctx.abort(grpc.StatusCode.UNAVAILABLE, _dependency_message(exc))

            return run

        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler, wrap_unary),
            ("stream_unary", grpc.stream_unary_rpc_method_handler, wrap_unary),
            ("unary_stream", grpc.unary_stream_rpc_method_handler, wrap_stream),
            ("stream_stream", grpc.stream_stream_rpc_method_handler, wrap_stream),
        )
        for attr, make, wrap in kinds:
            fn = getattr(handler, attr)
            if fn:
                return make(
                    wrap(fn),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler
