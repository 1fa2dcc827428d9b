"""Request building shared by the sync and asyncio clients."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from earmark.v1 import common_pb2, ingest_pb2, search_pb2

CHUNK_BYTES = 1024 * 1024
# Uploads and clips are larger than gRPC's 4 MiB default.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]

AudioSource = bytes | str | Path


def read_audio(source: AudioSource) -> bytes:
    if isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


def upload_messages(
    data: bytes,
    *,
    external_id: str,
    filename: str = "",
    metadata: Mapping[str, str] | None = None,
) -> Iterator[ingest_pb2.UploadRequest]:
    meta = dict(metadata or {})
    known = {k: meta.pop(k) for k in ("title", "artist", "album", "isrc") if k in meta}
    header = ingest_pb2.UploadHeader(
        external_id=external_id,
        filename=filename,
        metadata=common_pb2.TrackMetadata(**known, extra=meta),
    )
    yield ingest_pb2.UploadRequest(header=header)
    for start in range(0, len(data), CHUNK_BYTES):
        yield ingest_pb2.UploadRequest(chunk=data[start : start + CHUNK_BYTES])


def audio_input(data: bytes) -> common_pb2.AudioInput:
    return common_pb2.AudioInput(encoded=data)


def scan_messages(
    data: bytes, *, window_s: float = 0.0, hop_s: float = 0.0
) -> Iterator[search_pb2.ScanRequest]:
    yield search_pb2.ScanRequest(header=search_pb2.ScanHeader(window_s=window_s, hop_s=hop_s))
    for start in range(0, len(data), CHUNK_BYTES):
        yield search_pb2.ScanRequest(chunk=data[start : start + CHUNK_BYTES])
