"""Wiring every service repeats: settings, logging, tracing, NATS, stream, blobs, database."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from psycopg_pool import AsyncConnectionPool

from . import bus, db
from .auth import KeyStore
from .blobs import BlobStore, open_blob_store
from .config import Settings, load_settings
from .logs import configure_logging
from .telemetry import setup_tracing
from .tls import TlsFiles, load_tls

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    settings: Settings
    nc: NatsClient
    js: JetStreamContext
    blobs: BlobStore | None = None
    pool: AsyncConnectionPool | None = None
    consumers: list[bus.Consumer[Any]] = field(default_factory=list)
    keys: KeyStore | None = None
    tls: TlsFiles | None = None

    def db(self) -> AsyncConnectionPool:
        if self.pool is None:
            raise RuntimeError(f"{self.settings.service} runs without a database")
        return self.pool

    def blob_store(self) -> BlobStore:
        if self.blobs is None:
            raise RuntimeError(f"{self.settings.service} runs without a blob store")
        return self.blobs

    def health_checks(self) -> dict[str, Callable[[], Awaitable[bool]]]:
        checks: dict[str, Callable[[], Awaitable[bool]]] = {}

        async def nats_ok() -> bool:
            return bool(self.nc.is_connected)

        checks["nats"] = nats_ok
        if self.pool is not None:
            pool = self.pool

            async def db_ok() -> bool:
                return await db.ping(pool)

            checks["postgres"] = db_ok
        for consumer in self.consumers:

            async def consumer_ok(c: bus.Consumer[Any] = consumer) -> bool:
                return c.healthy

            checks[f"consumer:{consumer.durable}"] = consumer_ok
        return checks

    def background_jobs(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        return [c.run for c in self.consumers]

    async def close(self) -> None:
        for consumer in self.consumers:
            consumer.stop()
        # In-flight handlers finish and ack; unacked work is redelivered to another replica.
        await asyncio.gather(*(c.wait_stopped(30.0) for c in self.consumers))
        try:
            await asyncio.wait_for(self.nc.flush(), timeout=2.0)
        except Exception:
            log.debug("NATS flush failed", exc_info=True)
        await self.nc.close()
        if self.pool is not None:
            await self.pool.close()


async def _connect_with_retry(url: str, name: str, attempts: int = 60) -> NatsClient:
    for attempt in range(1, attempts + 1):
        try:
            return await bus.connect(url, name)
        except Exception as exc:
            if attempt == attempts:
                raise
            log.warning("NATS at %s not reachable (%s); retrying", url, exc)
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


async def start_context(
    service: str,
    *,
    migrations: Sequence[tuple[str, Sequence[str]]] = (),
    use_database: bool = False,
    use_blobs: bool = False,
) -> ServiceContext:
    settings = load_settings(service)
    configure_logging(service, settings.log_level, settings.log_format)
    setup_tracing(f"earmark-{service}", settings.otel_exporter)
    nc = await _connect_with_retry(settings.nats_url, f"earmark-{service}")
    js = nc.jetstream()
    await bus.ensure_stream(js, settings.stream_replicas)
    ctx = ServiceContext(
        settings=settings, nc=nc, js=js, keys=KeyStore.load(settings.api_keys_file)
    )
    ctx.tls = load_tls(settings.tls_cert, settings.tls_key, settings.tls_ca)
    if ctx.keys is None:
        log.warning("EARMARK_API_KEYS_FILE is not set: calls are not authenticated")
    if use_blobs:
        ctx.blobs = open_blob_store(settings.blob_url, js, replicas=settings.stream_replicas)
    if use_database or migrations:
        ctx.pool = await db.open_pool(settings.database_url)
        for schema, steps in migrations:
            await db.migrate(ctx.pool, schema, steps)
    return ctx


def abort_code(exc: Exception) -> grpc.StatusCode:
    """Status for a dependency failure seen while serving a call."""
    if isinstance(exc, grpc.aio.AioRpcError):
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.UNAVAILABLE


def dial(ctx: ServiceContext, addr: str, interceptors: list[Any]) -> grpc.aio.Channel:
    """A channel to another Earmark service: mutual TLS when a CA is configured."""
    from .server import grpc_options
    from .tls import channel_credentials

    if ctx.tls is not None and ctx.tls.ca is not None:
        return grpc.aio.secure_channel(
            addr, channel_credentials(ctx.tls), options=grpc_options(), interceptors=interceptors
        )
    return grpc.aio.insecure_channel(addr, options=grpc_options(), interceptors=interceptors)
