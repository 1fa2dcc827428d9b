"""asyncio Earmark client, for services and high-concurrency callers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path

from earmark.v1 import ingest_pb2, ingest_pb2_grpc, search_pb2, search_pb2_grpc

from . import _auth
from ._requests import (
    AudioSource,
    audio_input,
    read_audio,
    scan_messages,
    upload_messages,
)
from .client import monitor_chunk, monitor_config
from .discovery import resolve
from .results import (
    Identification,
    MonitorEvent,
    Submission,
    TimelineEntry,
    Track,
    identify_method,
)


class AsyncEarmark:
    """`async with AsyncEarmark() as em: match = (await em.identify(clip)).match`"""

    def __init__(
        self,
        *,
        ingest: str | None = None,
        search: str | None = None,
        timeout_s: float = 60.0,
        api_key: str | None = None,
    ) -> None:
        ends = resolve(ingest=ingest, search=search)
        self._ingest_channel = _auth.aio_channel(ends.ingest)
        self._search_channel = _auth.aio_channel(ends.search)
        self._ingest = ingest_pb2_grpc.IngestServiceStub(self._ingest_channel)
        self._search = search_pb2_grpc.SearchServiceStub(self._search_channel)
        self._timeout = timeout_s
        self._metadata = _auth.aio_metadata(_auth.api_key(api_key))  # default: $EARMARK_API_KEY

    async def close(self) -> None:
        await self._ingest_channel.close()
        await self._search_channel.close()

    async def __aenter__(self) -> AsyncEarmark:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def upload(
        self,
        source: AudioSource,
        *,
        external_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Submission:
        data = await asyncio.to_thread(read_audio, source)
        name = Path(source).name if not isinstance(source, bytes) else ""
        ext_id = external_id or (str(source) if not isinstance(source, bytes) else "")
        reply = await self._ingest.Upload(
            upload_messages(data, external_id=ext_id, filename=name, metadata=metadata),
            timeout=self._timeout,
            metadata=self._metadata,
        )
        return Submission.from_proto(reply.submission)

    async def submissions(self, submission_ids: Sequence[str]) -> list[Submission]:
        reply = await self._ingest.BatchGetSubmissions(
            ingest_pb2.BatchGetSubmissionsRequest(submission_ids=list(submission_ids)),
            timeout=self._timeout,
            metadata=self._metadata,
        )
        return [Submission.from_proto(s) for s in reply.submissions]

    async def wait(
        self, submission_ids: Sequence[str], *, timeout_s: float = 600.0
    ) -> list[Submission]:
        deadline = time.monotonic() + timeout_s
        delay = 0.1
        while True:
            subs = await self.submissions(submission_ids)
            if len(subs) == len(submission_ids) and all(s.final for s in subs):
                return subs
            if time.monotonic() > deadline:
                raise TimeoutError(f"submissions not final after {timeout_s:.0f} s")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    async def identify(
        self, clip: AudioSource, *, max_matches: int = 1, method: str = "auto"
    ) -> Identification:
        """Best catalog matches of a clip; method: auto, landmarks, neural or fused."""
        data = await asyncio.to_thread(read_audio, clip)
        started = time.perf_counter()
        reply = await self._search.Identify(
            search_pb2.IdentifyRequest(
                audio=audio_input(data),
                max_matches=max_matches,
                method=identify_method(method),
            ),
            timeout=self._timeout,
            metadata=self._metadata,
        )
        return Identification.from_proto(reply, (time.perf_counter() - started) * 1000)

    async def scan(
        self, recording: AudioSource, *, window_s: float = 0.0, hop_s: float = 0.0
    ) -> list[TimelineEntry]:
        data = await asyncio.to_thread(read_audio, recording)
        reply = await self._search.Scan(
            scan_messages(data, window_s=window_s, hop_s=hop_s),
            timeout=max(self._timeout, 600.0),
            metadata=self._metadata,
        )
        return [TimelineEntry.from_proto(e) for e in reply.entries]

    async def tracks(self, page_size: int = 500) -> AsyncIterator[Track]:
        token = ""
        while True:
            reply = await self._search.ListTracks(
                search_pb2.ListTracksRequest(page_size=page_size, page_token=token),
                timeout=self._timeout,
                metadata=self._metadata,
            )
            for t in reply.tracks:
                yield Track.from_proto(t)
            token = reply.next_page_token
            if not token:
                return

    async def delete_track(self, track_id: str) -> None:
        await self._search.DeleteTrack(
            search_pb2.DeleteTrackRequest(track_id=track_id),
            timeout=self._timeout,
            metadata=self._metadata,
        )

    async def monitor(
        self,
        chunks: AsyncIterable[bytes] | Iterable[bytes],
        *,
        sample_rate_hz: int = 8000,
        channels: int = 1,
        encoded: bool = False,
        stream_name: str = "",
        report_interval_s: float = 0.0,
    ) -> AsyncIterator[MonitorEvent]:
        """Events of a live stream as they happen (see `Earmark.monitor`)."""

        async def requests() -> AsyncIterator[search_pb2.MonitorRequest]:
            yield monitor_config(stream_name, report_interval_s)
            pieces = chunks if isinstance(chunks, AsyncIterable) else _aiter(chunks)
            async for chunk in pieces:
                yield monitor_chunk(
                    chunk, sample_rate_hz=sample_rate_hz, channels=channels, encoded=encoded
                )

        call = self._search.Monitor(requests(), metadata=self._metadata)
        try:
            async for event in call:
                yield MonitorEvent.from_proto(event)
        finally:
            call.cancel()


async def _aiter(items: Iterable[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item
