"""Sending the caller's API key (x-api-key metadata) on every call."""

from __future__ import annotations

import collections
import os
from typing import Any

import grpc

from ._requests import CHANNEL_OPTIONS


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    pass


def _with_key(details: grpc.ClientCallDetails, key: str) -> grpc.ClientCallDetails:
    metadata = [*(details.metadata or ()), ("x-api-key", key)]
    return _Details(
        details.method,
        details.timeout,
        metadata,
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


class _KeyInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, key: str) -> None:
        self._key = key

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_key(details, self._key), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_key(details, self._key), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(_with_key(details, self._key), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(_with_key(details, self._key), requests)


def api_key(explicit: str | None) -> str:
    return explicit if explicit is not None else os.environ.get("EARMARK_API_KEY", "")


def sync_channel(addr: str, key: str) -> tuple[grpc.Channel, grpc.Channel]:
    """(channel to close, channel to build stubs on)."""
    raw = grpc.insecure_channel(addr, options=CHANNEL_OPTIONS)
    return raw, (grpc.intercept_channel(raw, _KeyInterceptor(key)) if key else raw)


def aio_metadata(key: str) -> list[tuple[str, str]]:
    return [("x-api-key", key)] if key else []
