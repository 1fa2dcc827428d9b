"""Backpressure on a real grpc.aio server on loopback: calls beyond the in-flight
limit are refused at once with RESOURCE_EXHAUSTED, a precise message and retry
advice; streams hold a slot while they run; health checks are never refused; a
freed slot is usable again. And the exec probe the chart uses under (mutual) TLS,
where kubelet's plaintext gRPC probe cannot connect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from earmark.v1 import (
    common_pb2,
    fingerprint_pb2,
    fingerprint_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
)
from earmark_runtime.admission import MIN_RETRY_AFTER_MS, RETRY_AFTER_KEY, Admission
from earmark_runtime.healthcheck import check, main
from earmark_runtime.interceptors import ServerInterceptor
from earmark_runtime.tls import load_tls, server_credentials
from tests.integration.test_tls import _cert, _write

LIMIT = 2


class Gate:
    """Calls wait here until the test opens it, so they stay in flight."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.entered = 0

    async def hold(self) -> None:
        self.entered += 1
        await self.open.wait()


class SlowFingerprint(fingerprint_pb2_grpc.FingerprintServiceServicer):
    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    async def ExtractFingerprint(
        self, request: fingerprint_pb2.ExtractFingerprintRequest, context: grpc.aio.ServicerContext
    ) -> fingerprint_pb2.ExtractFingerprintResponse:
        await self._gate.hold()
        return fingerprint_pb2.ExtractFingerprintResponse(
            landmarks=common_pb2.LandmarkFingerprint(algorithm_version=1)
        )


class SlowIngest(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    async def WatchSubmission(
        self, request: ingest_pb2.WatchSubmissionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ingest_pb2.WatchSubmissionResponse]:
        yield ingest_pb2.WatchSubmissionResponse()
        await self._gate.hold()

    async def Upload(
        self,
        request_iterator: AsyncIterator[ingest_pb2.UploadRequest],
        context: grpc.aio.ServicerContext,
    ) -> ingest_pb2.UploadResponse:
        async for _ in request_iterator:
            pass
        await self._gate.hold()
        return ingest_pb2.UploadResponse()


@pytest.fixture
async def served() -> AsyncIterator[tuple[grpc.aio.Channel, Gate, Admission, int]]:
    gate = Gate()
    admission = Admission(LIMIT)
    server = grpc.aio.server(interceptors=[ServerInterceptor(None, admission)])
    fingerprint_pb2_grpc.add_FingerprintServiceServicer_to_server(SlowFingerprint(gate), server)
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(SlowIngest(gate), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, gate, admission, port
    finally:
        gate.open.set()
        await channel.close()
        await server.stop(1.0)


async def _until(predicate: object, timeout_s: float = 10.0) -> None:
    async def wait() -> None:
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout_s)


def _extract(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryCall:
    stub = fingerprint_pb2_grpc.FingerprintServiceStub(channel)
    return stub.ExtractFingerprint(fingerprint_pb2.ExtractFingerprintRequest(), timeout=30)


async def test_calls_beyond_the_limit_are_refused_with_retry_advice(
    served: tuple[grpc.aio.Channel, Gate, Admission, int],
) -> None:
    channel, gate, admission, _port = served
    held = [_extract(channel) for _ in range(LIMIT)]
    await _until(lambda: gate.entered == LIMIT)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _extract(channel)
    err = refused.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = err.details() or ""
    assert f"the limit is {LIMIT}" in details and "EARMARK_MAX_INFLIGHT" in details
    assert "ExtractFingerprint" in details and "retry after" in details
    trailing = dict(err.trailing_metadata() or ())
    assert int(trailing[RETRY_AFTER_KEY]) >= MIN_RETRY_AFTER_MS
    assert gate.entered == LIMIT  # the refused call never reached the servicer
    assert admission.refused == 1

    # Health answers while the server is saturated: probes must not fail under load.
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    gate.open.set()
    for call in held:
        assert (await call).landmarks.algorithm_version == 1
    assert admission.inflight == 0
    # Slots were given back: the server takes calls again.
    assert (await _extract(channel)).landmarks.algorithm_version == 1


async def test_streams_hold_a_slot_while_they_run(
    served: tuple[grpc.aio.Channel, Gate, Admission, int],
) -> None:
    channel, gate, admission, _port = served
    stub = ingest_pb2_grpc.IngestServiceStub(channel)
    watch = stub.WatchSubmission(ingest_pb2.WatchSubmissionRequest(), timeout=30)
    await watch.read()  # the server stream is open and parked at the gate

    async def chunks() -> AsyncIterator[ingest_pb2.UploadRequest]:
        yield ingest_pb2.UploadRequest(header=ingest_pb2.UploadHeader(external_id="x"))
        yield ingest_pb2.UploadRequest(chunk=b"\0" * 1024)

    upload = stub.Upload(chunks(), timeout=30)
    await _until(lambda: gate.entered == LIMIT)
    assert admission.inflight == LIMIT

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _extract(channel)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # A stream refused at the limit ends with the same status.
    second_watch = stub.WatchSubmission(ingest_pb2.WatchSubmissionRequest(), timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as refused_stream:
        await second_watch.read()
    assert refused_stream.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    gate.open.set()
    await upload
    assert await watch.read() is grpc.aio.EOF
    await _until(lambda: admission.inflight == 0)


def test_retry_advice_follows_the_typical_call_duration() -> None:
    admission = Admission(1)
    assert admission.retry_after_ms == MIN_RETRY_AFTER_MS  # nothing measured yet
    for _ in range(200):
        assert admission.try_enter()
        admission.leave(0.4)
    assert admission.retry_after_ms == 400
    assert admission.try_enter()
    assert not admission.try_enter()
    admission.leave(None)  # a stream's lifetime does not move the advice
    assert admission.retry_after_ms == 400
    with pytest.raises(ValueError, match="at least 1"):
        Admission(0)


async def test_the_probe_command_reads_health_in_plaintext(
    served: tuple[grpc.aio.Channel, Gate, Admission, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _channel, _gate, _admission, port = served
    for name in ("EARMARK_TLS_CERT", "EARMARK_TLS_KEY", "EARMARK_TLS_CA"):
        monkeypatch.delenv(name, raising=False)
    assert await asyncio.to_thread(check, port, server_name="localhost") == "SERVING"
    assert await asyncio.to_thread(main, ["--port", str(port)]) == 0


async def test_the_probe_command_speaks_mutual_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = _cert("earmark-test-ca", None, ca=True)
    _write(tmp_path, "ca", *ca)
    _write(tmp_path, "server", *_cert("earmark-service", ca, ca=False))
    tls = load_tls(
        str(tmp_path / "server.crt"), str(tmp_path / "server.key"), str(tmp_path / "ca.crt")
    )
    assert tls is not None
    server = grpc.aio.server()
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(tls))
    await server.start()
    try:
        # Without the files: plaintext against TLS gets no answer.
        for name in ("EARMARK_TLS_CERT", "EARMARK_TLS_KEY", "EARMARK_TLS_CA"):
            monkeypatch.delenv(name, raising=False)
        assert (await asyncio.to_thread(check, port, server_name="localhost")).startswith(
            "UNREACHABLE"
        )
        monkeypatch.setenv("EARMARK_TLS_CERT", str(tmp_path / "server.crt"))
        monkeypatch.setenv("EARMARK_TLS_KEY", str(tmp_path / "server.key"))
        monkeypatch.setenv("EARMARK_TLS_CA", str(tmp_path / "ca.crt"))
        assert await asyncio.to_thread(check, port, server_name="localhost") == "NOT_SERVING"
        assert await asyncio.to_thread(main, ["--port", str(port)]) == 1
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert await asyncio.to_thread(main, ["--port", str(port)]) == 0
        # A name the certificate does not carry fails verification.
        wrong = await asyncio.to_thread(check, port, server_name="not-in-the-cert")
        assert wrong.startswith("UNREACHABLE")
    finally:
        await server.stop(1.0)
