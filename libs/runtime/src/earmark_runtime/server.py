"""gRPC server bootstrap shared by every service.

Health is real: a background task probes the service's dependencies and sets
SERVING only while all of them answer, so a Kubernetes readiness probe takes a
replica out of rotation when its database or NATS is gone. SIGTERM flips
health to NOT_SERVING, lets in-flight calls finish, then stops. At most
EARMARK_MAX_INFLIGHT calls run at once; more are refused with
RESOURCE_EXHAUSTED and retry advice (see admission.py); health never is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .admission import Admission
from .auth import KeyStore
from .config import load_settings
from .interceptors import ServerInterceptor
from .tls import TlsFiles, server_credentials

log = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[bool]]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def grpc_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


class HealthReporter:
    def __init__(self, servicer: health.aio.HealthServicer, service_names: Iterable[str]) -> None:
        self._servicer = servicer
        self._names = ["", *service_names]
        self.serving = False

    async def set(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if serving != self.serving:
            log.info("health -> %s", "SERVING" if serving else "NOT_SERVING")
        self.serving = serving
        for name in self._names:
            await self._servicer.set(name, status)


async def _probe(checks: Mapping[str, HealthCheck]) -> tuple[bool, list[str]]:
    failing: list[str] = []
    for name, check in checks.items():
        try:
            ok = await asyncio.wait_for(check(), timeout=3.0)
        except Exception:
            ok = False
        if not ok:
            failing.append(name)
    return not failing, failing


async def run_server(
    *,
    bind: str,
    full_service_names: Iterable[str],
    register: Callable[[grpc.aio.Server], None],
    health_checks: Mapping[str, HealthCheck],
    background: Iterable[Callable[[], Coroutine[Any, Any, None]]] = (),
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    keys: KeyStore | None = None,
    tls: TlsFiles | None = None,
    max_inflight: int | None = None,
    grace_s: float = 5.0,
    probe_interval_s: float = 2.0,
) -> None:
    """Serve until SIGTERM/SIGINT; runs `background` tasks alongside.

    `max_inflight`: calls worked on at once (None: EARMARK_MAX_INFLIGHT).
    """
    limit = max_inflight if max_inflight is not None else load_settings("server").max_inflight
    admission = Admission(limit)
    server = grpc.aio.server(
        interceptors=[ServerInterceptor(keys, admission)], options=grpc_options()
    )
    register(server)
    names = list(full_service_names)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    reporter = HealthReporter(health_servicer, names)
    await reporter.set(False)
    if tls is not None and tls.serves_tls:
        port = server.add_secure_port(bind, server_credentials(tls))
    else:
        port = server.add_insecure_port(bind)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {bind}")
    await server.start()
    log.info("gRPC listening on %s (at most %d calls at once)", bind, limit)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def probe_forever() -> None:
        last_failing: list[str] = []
        while not stop.is_set():
            ok, failing = await _probe(health_checks)
            if failing != last_failing and failing:
                log.warning("dependencies not ready: %s", ", ".join(failing))
            last_failing = failing
            await reporter.set(ok)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=probe_interval_s)

    tasks = [asyncio.create_task(probe_forever())]
    tasks += [asyncio.create_task(job()) for job in background]

    async def watch_tasks() -> None:
        done, _ = await asyncio.wait(tasks[1:], return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                log.error("background task failed", exc_info=task.exception())
                stop.set()

    watcher = asyncio.create_task(watch_tasks()) if len(tasks) > 1 else None
    await stop.wait()
    log.info("shutting down: draining calls for up to %.0fs", grace_s)
    await reporter.set(False)
    await server.stop(grace_s)
    if on_shutdown is not None:
        await on_shutdown()
    for task in [*tasks, *([watcher] if watcher else [])]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    log.info("stopped")
