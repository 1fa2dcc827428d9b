"""The real servicers (fingerprint, ingest, search) behind the real server
interceptor on a loopback grpc.aio server, for the proto fuzzers and the corpus
replay; and `call`, which sends raw request bytes and checks the status.

The servicers run without NATS or PostgreSQL: their stores are stand-ins that
know no submission and no track (and a directory blob store), so what is
exercised is request parsing and validation, decoding and fingerprinting; the
storage code behind them has its own integration tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np

from earmark.v1 import common_pb2, fingerprint_pb2_grpc, ingest_pb2_grpc, search_pb2_grpc
from earmark_fingerprint.app import FingerprintServicer
from earmark_ingest.app import IngestServicer
from earmark_runtime.admission import Admission
from earmark_runtime.blobs import open_blob_store
from earmark_runtime.config import load_settings
from earmark_runtime.interceptors import ServerInterceptor
from earmark_search.app import SearchServicer

# Statuses a client can act on. Not UNKNOWN (a handler raised), not INTERNAL (a
# request that does not parse is INVALID_ARGUMENT since interceptors._tolerant),
# not DEADLINE_EXCEEDED (a handler hung).
ACCEPTABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
}
CALL_TIMEOUT_S = 60.0


class NoSubmissions:
    """The submissions store, knowing none: lookups find nothing, creates succeed."""

    async def get_many(self, ids: list[str]) -> list[common_pb2.Submission]:
        return []

    async def live_by_sha(self, shas: list[str]) -> list[common_pb2.Submission]:
        return []

    async def blob_key_of(self, submission_id: str) -> str:
        return ""

    async def create(self, new: Any) -> tuple[common_pb2.Submission, bool]:
        return common_pb2.Submission(submission_id=new.submission_id, state=1), True

    async def mark_published(self, submission_id: str) -> None:
        return None


class NoTracks:
    """The catalog, holding no track."""

    async def postings(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        empty = np.empty(0, dtype=np.int64)
        return np.empty(0, dtype="<u4"), empty, empty

    async def rarest_postings(
        self, hashes: np.ndarray, max_postings: int, *, parts: int = 1
    ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int]:
        return await self.postings(hashes), 0

    async def tracks_by_key(self, keys: list[int]) -> dict[int, Any]:
        return {}

    async def get_track(self, track_id: str) -> None:
        return None

    async def list_tracks(self, after_key: int, limit: int) -> tuple[list[Any], int]:
        return [], 0

    async def delete_track(self, track_id: str) -> bool:
        return False


class NoBus:
    """A JetStream whose publishes fail: ingest defers them to its outbox."""

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("no NATS in the fuzz tests")


class LiveServicers:
    """One grpc.aio server with the real servicers, on its own loop in a thread."""

    def __init__(self, blob_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._blob_dir = blob_dir
        self.address = ""

    def __enter__(self) -> LiveServicers:
        self._thread.start()
        self.address = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)
        return self

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(1.0), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _start(self) -> str:
        fingerprint_ctx = SimpleNamespace(
            settings=dataclasses.replace(load_settings("fingerprint"), max_duration_s=120.0)
        )
        blobs = open_blob_store(f"file://{self._blob_dir}", None)
        ingest_ctx = SimpleNamespace(
            settings=dataclasses.replace(
                load_settings("ingest"), max_upload_bytes=256 * 1024, required_tags=()
            ),
            js=NoBus(),
            blob_store=lambda: blobs,
        )
        search_ctx = SimpleNamespace(settings=load_settings("search"), js=NoBus())
        self._server = grpc.aio.server(interceptors=[ServerInterceptor(None, Admission(64))])
        fingerprint_pb2_grpc.add_FingerprintServiceServicer_to_server(
            FingerprintServicer(fingerprint_ctx),  # type: ignore[arg-type]
            self._server,
        )
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(
            IngestServicer(ingest_ctx, NoSubmissions()),  # type: ignore[arg-type]
            self._server,
        )
        port = self._server.add_insecure_port("127.0.0.1:0")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        fingerprinter = fingerprint_pb2_grpc.FingerprintServiceStub(channel)
        search_pb2_grpc.add_SearchServiceServicer_to_server(
            SearchServicer(search_ctx, NoTracks(), fingerprinter),  # type: ignore[arg-type]
            self._server,
        )
        await self._server.start()
        return f"127.0.0.1:{port}"


def call(channel: grpc.Channel, method: str, messages: list[bytes]) -> grpc.StatusCode:
    """Send raw request bytes to `method`; the status it ended with."""
    kind = KINDS[method]
    try:
        if kind == "unary_unary":
            channel.unary_unary(method)(messages[0], timeout=CALL_TIMEOUT_S)
        elif kind == "stream_unary":
            channel.stream_unary(method)(iter(messages), timeout=CALL_TIMEOUT_S)
        else:
            for _ in channel.unary_stream(method)(messages[0], timeout=CALL_TIMEOUT_S):
                pass
    except grpc.RpcError as err:
        code: grpc.StatusCode = err.code()  # type: ignore[attr-defined]
        details = err.details() or ""  # type: ignore[attr-defined]
        assert code in ACCEPTABLE, f"{method} answered {code.name}: {details}"
        return code
    return grpc.StatusCode.OK


def pack(messages: list[bytes]) -> bytes:
    """A request stream as one corpus file: 4-byte length, then the message, each."""
    return b"".join(struct.pack("<I", len(m)) + m for m in messages)


def unpack(blob: bytes) -> list[bytes]:
    messages, pos = [], 0
    while pos + 4 <= len(blob):
        (size,) = struct.unpack_from("<I", blob, pos)
        messages.append(blob[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return messages or [b""]


FINGERPRINT = "/earmark.v1.FingerprintService/ExtractFingerprint"
SEARCH = "/earmark.v1.SearchService/"
INGEST = "/earmark.v1.IngestService/"
KINDS = {
    FINGERPRINT: "unary_unary",
    SEARCH + "Identify": "unary_unary",
    SEARCH + "Scan": "stream_unary",
    SEARCH + "GetTrack": "unary_unary",
    SEARCH + "ListTracks": "unary_unary",
    SEARCH + "DeleteTrack": "unary_unary",
    INGEST + "Upload": "stream_unary",
    INGEST + "GetSubmission": "unary_unary",
    INGEST + "BatchGetSubmissions": "unary_unary",
    INGEST + "WatchSubmission": "unary_stream",
    INGEST + "LookupSubmissions": "unary_unary",
    INGEST + "Download": "unary_stream",
}
