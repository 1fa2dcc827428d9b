"""How the SDK connects: TLS when EARMARK_TLS_CA is set (with a client certificate
from EARMARK_TLS_CERT/EARMARK_TLS_KEY for mutual TLS), and the caller's API key
(x-api-key metadata) on every call."""

from __future__ import annotations

import collections
import os
from pathlib import Path
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


def credentials(env: dict[str, str] | None = None) -> grpc.ChannelCredentials | None:
    """TLS credentials from EARMARK_TLS_* (in `env`, default os.environ); None: plaintext."""
    source = os.environ if env is None else env

    def read(name: str) -> bytes | None:
        path = source.get(name, "")
        return Path(path).read_bytes() if path else None

    ca = read("EARMARK_TLS_CA")
    if ca is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=read("EARMARK_TLS_KEY"),
        certificate_chain=read("EARMARK_TLS_CERT"),
    )


def sync_channel(addr: str, key: str) -> tuple[grpc.Channel, grpc.Channel]:
    """(channel to close, channel to build stubs on)."""
    creds = credentials()
    raw = (
        grpc.secure_channel(addr, creds, options=CHANNEL_OPTIONS)
        if creds
        else grpc.insecure_channel(addr, options=CHANNEL_OPTIONS)
    )
    return raw, (grpc.intercept_channel(raw, _KeyInterceptor(key)) if key else raw)


def aio_channel(addr: str) -> grpc.aio.Channel:
    creds = credentials()
    if creds:
        return grpc.aio.secure_channel(addr, creds, options=CHANNEL_OPTIONS)
    return grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS)


def aio_metadata(key: str) -> list[tuple[str, str]]:
    return [("x-api-key", key)] if key else []
