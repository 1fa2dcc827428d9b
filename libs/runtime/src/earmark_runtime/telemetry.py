"""OpenTelemetry tracing across gRPC calls and NATS hops.

Trace context travels in gRPC metadata and in NATS message headers using the
W3C traceparent format, so one ingest shows up as one trace spanning every
service that worked on it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

log = logging.getLogger(__name__)

_provider: TracerProvider | None = None


def setup_tracing(service_name: str, exporter: str = "none") -> TracerProvider:
    """Install the process-wide tracer provider once; later calls return it."""
    global _provider
    if _provider is not None:
        return _provider
    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    span_exporter: SpanExporter | None = None
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError:
            log.warning("EARMARK_OTEL_EXPORTER=otlp but opentelemetry-exporter-otlp is missing")
        else:
            span_exporter = OTLPSpanExporter()
    if span_exporter is not None:
        if exporter == "otlp":
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(BatchSpanProcessor(span_exporter))
        else:
            provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def tracer(name: str = "earmark") -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Current trace context as string headers (for NATS messages or gRPC metadata)."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> context.Context:
    return propagate.extract(dict(headers or {}))


class _ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Opens a SERVER span per RPC, continuing the caller's trace from metadata."""

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

        def wrap_unary(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def run(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
                with tracer().start_as_current_span(
                    method, context=parent, kind=SpanKind.SERVER
                ) as span:
                    span.set_attribute("rpc.system", "grpc")
                    try:
                        return await fn(request, ctx)
                    finally:
                        code = ctx.code() if hasattr(ctx, "code") else None
                        if code not in (None, grpc.StatusCode.OK):
                            span.set_status(Status(StatusCode.ERROR, str(code)))

            return run

        def wrap_stream_response(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def run(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
                with tracer().start_as_current_span(method, context=parent, kind=SpanKind.SERVER):
                    async for item in fn(request, ctx):
                        yield item

            return run

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary(handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream_response(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                wrap_stream_response(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def server_interceptor() -> grpc.aio.ServerInterceptor:
    return _ServerInterceptor()


class _ClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Opens a CLIENT span per outgoing unary call and sends its context along."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        with tracer().start_as_current_span(name, kind=SpanKind.CLIENT):
            metadata = list(client_call_details.metadata or ())
            metadata.extend(inject_headers().items())
            details = grpc.aio.ClientCallDetails(
                method=client_call_details.method,
                timeout=client_call_details.timeout,
                metadata=grpc.aio.Metadata(*metadata),
                credentials=client_call_details.credentials,
                wait_for_ready=client_call_details.wait_for_ready,
            )
            call = await continuation(details, request)
            return await call


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    return [_ClientInterceptor()]
