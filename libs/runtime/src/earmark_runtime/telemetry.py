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
from opentelemetry.trace import SpanKind

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


class _ClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Opens a CLIENT span per outgoing unary call and sends its context (and the
    service's own API key, when it has one) along."""

    def __init__(self, api_key: str = "") -> None:
        self._api_key = api_key

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
            if self._api_key:
                metadata.append(("x-api-key", self._api_key))
            details = grpc.aio.ClientCallDetails(
                method=client_call_details.method,
                timeout=client_call_details.timeout,
                metadata=grpc.aio.Metadata(*metadata),
                credentials=client_call_details.credentials,
                wait_for_ready=client_call_details.wait_for_ready,
            )
            call = await continuation(details, request)
            return await call


def client_interceptors(api_key: str = "") -> list[grpc.aio.ClientInterceptor]:
    return [_ClientInterceptor(api_key)]
