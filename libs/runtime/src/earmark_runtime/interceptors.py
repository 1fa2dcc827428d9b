"""The server interceptor every service runs: a trace span per call, API keys and
roles, backpressure (at most EARMARK_MAX_INFLIGHT calls at once, the next one
refused with RESOURCE_EXHAUSTED and retry advice), and dependency failures turned
into UNAVAILABLE with a message a client can act on (retry), instead of UNKNOWN
with a driver's internals."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
from nats.errors import Error as NatsError
from opentelemetry.trace import SpanKind, Status, StatusCode

from .admission import RETRY_AFTER_KEY, Admission
from .auth import OPEN_PREFIXES, KeyStore
from .telemetry import extract_context, tracer

log = logging.getLogger(__name__)
# Calls that hold their stream open for as long as the audio lasts.
LONG_LIVED_METHODS: frozenset[str] = frozenset({"/earmark.v1.SearchService/Monitor"})

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


@dataclass(frozen=True)
class _Malformed:
    """Stands for a request message that did not parse."""

    error: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that returns _Malformed instead of raising.

    grpc.aio answers a request that does not parse with UNKNOWN and logs a
    traceback per call (found by tests/fuzz/test_fuzz_proto.py); this lets the
    handler wrapper answer INVALID_ARGUMENT with the reason instead.
    """
    if deserializer is None:
        return None
    message_type = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = getattr(message_type, "full_name", "request")

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Malformed(f"malformed {name}: {exc}"[:500])

    return parse


async def _reject_malformed(request: Any, ctx: grpc.aio.ServicerContext) -> None:
    if isinstance(request, _Malformed):
        await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)


async def _checked_stream(
    requests: AsyncIterator[Any], ctx: grpc.aio.ServicerContext
) -> AsyncIterator[Any]:
    async for request in requests:
        await _reject_malformed(request, ctx)
        yield request


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, keys: KeyStore | None = None, admission: Admission | None = None) -> None:
        self._keys = keys
        self._admission = admission

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

        # Probes must answer even when the server is saturated; a live stream lasts
        # for hours and is bounded by the monitor replicas' own stream limit.
        exempt = method.startswith(OPEN_PREFIXES) or method in LONG_LIVED_METHODS
        admission = None if exempt else self._admission

        async def check(ctx: grpc.aio.ServicerContext) -> None:
            if decision is not None and not decision.allowed:
                await ctx.abort(_STATUS[decision.code], decision.message)

        async def admit(ctx: grpc.aio.ServicerContext) -> float:
            """Take a slot (the caller gives it back) or refuse the call; the start time."""
            if admission is not None and not admission.try_enter():
                await ctx.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    admission.refusal_message(method),
                    trailing_metadata=((RETRY_AFTER_KEY, str(admission.retry_after_ms)),),
                )
            return time.perf_counter()

        def release(started: float, *, timed: bool = True) -> None:
            if admission is not None:
                admission.leave(time.perf_counter() - started if timed else None)

        async def parsed(request: Any, ctx: grpc.aio.ServicerContext, streamed: bool) -> Any:
            if streamed:
                return _checked_stream(request, ctx)
            await _reject_malformed(request, ctx)
            return request

        def wrap_unary(fn: Callable[..., Any], streamed: bool) -> Callable[..., Any]:
            async def run(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
                with tracer().start_as_current_span(
                    method, context=parent, kind=SpanKind.SERVER
                ) as span:
                    span.set_attribute("rpc.system", "grpc")
                    await check(ctx)
                    request = await parsed(request, ctx, streamed)
                    started = await admit(ctx)
                    try:
                        return await fn(request, ctx)
                    except _DEPENDENCY_ERRORS as exc:
                        log.warning("%s: dependency failure: %s", method, exc)
                        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                        await ctx.abort(grpc.StatusCode.UNAVAILABLE, _dependency_message(exc))
                    finally:
                        release(started)

            return run

        def wrap_stream(fn: Callable[..., Any], streamed: bool) -> Callable[..., Any]:
            async def run(request: Any, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                with tracer().start_as_current_span(method, context=parent, kind=SpanKind.SERVER):
                    await check(ctx)
                    request = await parsed(request, ctx, streamed)
                    # A stream holds its slot for as long as it runs.
                    started = await admit(ctx)
                    try:
                        async for item in fn(request, ctx):
                            yield item
                    except _DEPENDENCY_ERRORS as exc:
                        log.warning("%s: dependency failure: %s", method, exc)
                        await ctx.abort(grpc.StatusCode.UNAVAILABLE, _dependency_message(exc))
                    finally:
                        release(started, timed=False)

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
                    wrap(fn, streamed=attr.startswith("stream_")),
                    request_deserializer=_tolerant(handler.request_deserializer),
                    response_serializer=handler.response_serializer,
                )
        return handler
