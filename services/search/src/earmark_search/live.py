"""The Monitor RPC: a live stream in, track events out.

A thin adapter around the pure parts: the requests become 8 kHz mono PCM
(`StreamInput`: PCM at 8 kHz mono as it is, any other PCM or encoded audio
through one long-lived ffmpeg child), `LiveLandmarks` cuts it into hops, the
fingerprint service extracts each hop's window, the catalog is asked once per
hop for the new landmarks' postings, and `StreamTracker` decides the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import grpc
import numpy as np

from earmark.v1 import common_pb2, search_pb2
from earmark_runtime.audio import AudioDecodeError
from earmark_runtime.live_audio import LiveDecoder, PcmFormat

from .catalog import Catalog
from .identify import postings_budget
from .live_landmarks import FRAME_RATE_HZ, SAMPLE_RATE_HZ, ExtractionWindow, LiveLandmarks
from .monitoring import EventKind, StreamTracker, TrackerEvent, TrackerSettings
from .scanning import Postings

log = logging.getLogger(__name__)

HOP_S: Final = 1.0
# One request carries at most this much: a minute of 48 kHz stereo PCM is 11 MB.
MAX_CHUNK_BYTES: Final = 16 * 1024 * 1024
MAX_CHUNK_S: Final = 60.0
# Decoded audio waiting for analysis; beyond it the client's sends wait (flow control).
_QUEUE_BLOCKS: Final = 64
_READ_BYTES: Final = 16384

_EVENT_TYPES: Final = {
    EventKind.STARTED: search_pb2.MONITOR_EVENT_TYPE_STARTED,
    EventKind.PLAYING: search_pb2.MONITOR_EVENT_TYPE_PLAYING,
    EventKind.ENDED: search_pb2.MONITOR_EVENT_TYPE_ENDED,
    EventKind.UNKNOWN: search_pb2.MONITOR_EVENT_TYPE_UNKNOWN,
}

# (hashes, times) of a window's landmarks, times relative to the window.
Extractor = Callable[[np.ndarray], Awaitable[tuple[np.ndarray, np.ndarray]]]


class MonitorInputError(Exception):
    """The client's stream is malformed or its audio undecodable."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class _End:
    pass


_END: Final = _End()
Block = np.ndarray | MonitorInputError | _End


class StreamInput:
    """Turns Monitor requests into blocks of 8 kHz mono int16 PCM on a bounded queue."""

    def __init__(self, *, ffmpeg: str = "") -> None:
        self.queue: asyncio.Queue[Block] = asyncio.Queue(maxsize=_QUEUE_BLOCKS)
        self.config = search_pb2.MonitorConfig()
        self._ffmpeg = ffmpeg
        self._kind = ""  # "pcm" or "encoded" once the first audio arrived
        self._pcm_format: PcmFormat | None = None
        self._decoder: LiveDecoder | None = None
        self._drain: asyncio.Task[None] | None = None

    async def run(self, requests: AsyncIterator[search_pb2.MonitorRequest]) -> None:
        try:
            first = True
            async for request in requests:
                await self._take(request, first)
                first = False
            if self._decoder is not None:
                await self._decoder.end_input()
                assert self._drain is not None
                await self._drain
            else:
                await self.queue.put(_END)
        except MonitorInputError as exc:
            await self.queue.put(exc)
        except AudioDecodeError as exc:
            await self.queue.put(MonitorInputError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)))
        except Exception as exc:  # the reader must always say why it stopped
            log.exception("monitor input failed")
            message = f"reading the stream failed: {type(exc).__name__}"
            await self.queue.put(MonitorInputError(grpc.StatusCode.INTERNAL, message))

    async def close(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._drain
        if self._decoder is not None:
            await self._decoder.close()

    async def _take(self, request: search_pb2.MonitorRequest, first: bool) -> None:
        part = request.WhichOneof("part")
        if part == "config":
            if not first:
                raise _invalid("the config must be the first message of the call")
            interval = request.config.report_interval_s
            if interval and not 1.0 <= interval <= 3600.0:
                raise _invalid("report_interval_s must be within 1..3600 s (or 0 for 10 s)")
            self.config = request.config
            return
        if part is None:
            raise _invalid("empty message: set config, pcm or encoded")
        if self._kind and part != self._kind:
            raise _invalid("a call carries either PCM or encoded audio, not both")
        self._kind = part
        if part == "pcm":
            await self._take_pcm(request.pcm)
        else:
            await self._take_encoded(request.encoded)

    async def _take_pcm(self, pcm: common_pb2.PcmAudio) -> None:
        fmt = PcmFormat(pcm.sample_rate_hz, pcm.channels or 1)
        if not 1000 <= fmt.sample_rate_hz <= 384000 or not 1 <= fmt.channels <= 8:
            raise _invalid("PCM needs sample_rate_hz within 1000..384000 and 1..8 channels")
        if self._pcm_format is not None and fmt != self._pcm_format:
            raise _invalid("the PCM sample rate and channel count must not change during a call")
        self._pcm_format = fmt
        frame_bytes = 2 * fmt.channels
        if len(pcm.samples) % frame_bytes:
            raise _invalid("a PCM chunk must hold whole sample frames (16-bit, interleaved)")
        if len(pcm.samples) > min(MAX_CHUNK_BYTES, MAX_CHUNK_S * fmt.sample_rate_hz * frame_bytes):
            raise _invalid(f"a PCM chunk may hold at most {MAX_CHUNK_S:.0f} s of audio")
        if not pcm.samples:
            return
        if fmt == PcmFormat(SAMPLE_RATE_HZ, 1):
            await self.queue.put(np.frombuffer(pcm.samples, dtype="<i2"))
            return
        if self._decoder is None:
            await self._start_decoder(fmt)
        assert self._decoder is not None
        await self._decoder.write(pcm.samples)

    async def _take_encoded(self, data: bytes) -> None:
        if len(data) > MAX_CHUNK_BYTES:
            raise _invalid(f"an encoded chunk may hold at most {MAX_CHUNK_BYTES} bytes")
        if self._decoder is None:
            await self._start_decoder(None)
        assert self._decoder is not None
        if data:
            await self._decoder.write(data)

    async def _start_decoder(self, pcm: PcmFormat | None) -> None:
        self._decoder = await LiveDecoder.from_pipe(
            sample_rate_hz=SAMPLE_RATE_HZ, pcm=pcm, ffmpeg=self._ffmpeg
        )
        self._drain = asyncio.create_task(self._drain_decoder(self._decoder))

    async def _drain_decoder(self, decoder: LiveDecoder) -> None:
        carry = b""
        try:
            while data := await decoder.read(_READ_BYTES):
                data = carry + data
                whole = len(data) - len(data) % 2
                carry = data[whole:]
                if whole:
                    await self.queue.put(np.frombuffer(data[:whole], dtype="<i2"))
            await self.queue.put(_END)
        except AudioDecodeError as exc:
            await self.queue.put(MonitorInputError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)))


def _invalid(message: str) -> MonitorInputError:
    return MonitorInputError(grpc.StatusCode.INVALID_ARGUMENT, message)


class PostingsCache:
    """One catalog round trip per hop, for the hashes the previous hop did not ask for.

    A hop's tail comes back final at the next hop, so about half of each
    hop's hashes were looked up the hop before; their postings are kept for
    one hop (a track indexed or deleted meanwhile shows within a second).
    """

    def __init__(self, fetch: Callable[[np.ndarray], Awaitable[Postings]]) -> None:
        self._fetch = fetch
        self._hashes = np.zeros(0, dtype=np.uint32)
        empty = np.zeros(0, dtype=np.int64)
        self._postings: Postings = (np.zeros(0, dtype=np.uint32), empty, empty)

    async def lookup(self, hashes: np.ndarray) -> Postings:
        wanted = np.unique(np.asarray(hashes, dtype=np.uint32))
        missing = wanted[~np.isin(wanted, self._hashes, assume_unique=True)]
        kept = np.isin(self._postings[0], wanted)
        parts = [tuple(column[kept] for column in self._postings)]
        if missing.size:
            parts.append(await self._fetch(missing))
        merged: Postings = tuple(  # type: ignore[assignment]
            np.concatenate(columns) for columns in zip(*parts, strict=True)
        )
        self._hashes, self._postings = wanted, merged
        return merged


class MonitorSession:
    """One Monitor call: blocks of PCM in, MonitorEvent messages out."""

    def __init__(
        self,
        catalog: Catalog,
        extract: Extractor,
        *,
        max_audio_s: float,
        report_interval_s: float = 0.0,
    ) -> None:
        self._catalog = catalog
        self._extract = extract
        self._max_audio_s = max_audio_s
        self._live = LiveLandmarks(HOP_S)
        self._tracker = StreamTracker(
            FRAME_RATE_HZ, TrackerSettings(report_interval_s=report_interval_s or 10.0)
        )
        self._tracks: dict[int, common_pb2.Track] = {}
        self._postings = PostingsCache(self._rarest_postings)
        self.heard_audio = False

    @property
    def seconds(self) -> float:
        return self._live.seconds

    async def _rarest_postings(self, hashes: np.ndarray) -> Postings:
        # Identify's first budget, per hop: a hop's cost stays flat as the
        # catalog grows (the most common hashes say the least anyway). A hash
        # left out is not asked again while the cache holds it.
        postings, _ = await self._catalog.rarest_postings(hashes, postings_budget(hashes))
        return postings

    async def push(self, pcm: np.ndarray) -> list[search_pb2.MonitorEvent]:
        """Take decoded audio; the events of every hop it completes."""
        self._live.push(pcm)
        self.heard_audio = self.heard_audio or pcm.size > 0
        if self._live.seconds > self._max_audio_s:
            raise MonitorInputError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this call reached the limit of {self._max_audio_s:.0f} s of audio "
                "(EARMARK_MAX_MONITOR_S); open a new call to go on",
            )
        events: list[search_pb2.MonitorEvent] = []
        while self._live.ready():
            window = self._live.window()
            if window is not None:
                events += await self._hop(window)
        return events

    async def finish(self) -> list[search_pb2.MonitorEvent]:
        """The stream ended: analyse what is left, then end every play under way."""
        events: list[search_pb2.MonitorEvent] = []
        window = self._live.window(flush=True)
        if window is not None:
            events += await self._hop(window)
        return events + await self._to_proto(self._tracker.finish())

    async def _hop(self, window: ExtractionWindow) -> list[search_pb2.MonitorEvent]:
        hashes, times = await self._extract(window.samples)
        hop = self._live.accept(window, hashes, times)
        postings = await self._postings.lookup(np.concatenate([hop.hashes, hop.tail_hashes]))
        decided = await asyncio.to_thread(
            self._tracker.update,
            hop.hashes,
            hop.times,
            postings,
            self._live.settled_frame,
            hop.tail_hashes,
            hop.tail_times,
        )
        return await self._to_proto(decided)

    async def _to_proto(self, decided: list[TrackerEvent]) -> list[search_pb2.MonitorEvent]:
        missing = [e.track_key for e in decided if e.track_key and e.track_key not in self._tracks]
        if missing:
            found = await self._catalog.tracks_by_key(sorted(set(missing)))
            self._tracks.update({key: row.to_proto() for key, row in found.items()})
        out = []
        for event in decided:
            message = search_pb2.MonitorEvent(
                type=_EVENT_TYPES[event.kind],
                start_s=event.start_frame / FRAME_RATE_HZ,
                end_s=event.end_frame / FRAME_RATE_HZ,
                stream_time_s=self._live.seconds,
                play=event.play,
            )
            if event.track_key:
                track = self._tracks.get(event.track_key)
                if track is None:  # deleted from the catalog meanwhile
                    continue
                message.track.CopyFrom(track)
                message.track_offset_s = (event.start_frame + event.alignment) / FRAME_RATE_HZ
                message.score = float(event.score)
                message.confidence = event.confidence
            out.append(message)
        return out


async def monitor_events(
    requests: AsyncIterator[search_pb2.MonitorRequest],
    context: grpc.aio.ServicerContext,
    *,
    catalog: Catalog,
    extract: Extractor,
    max_audio_s: float,
    ffmpeg: str = "",
) -> AsyncIterator[search_pb2.MonitorEvent]:
    """The Monitor RPC's event stream; aborts with a precise status on bad input."""
    source = StreamInput(ffmpeg=ffmpeg)
    pump = asyncio.create_task(source.run(requests))
    session: MonitorSession | None = None
    try:
        while True:
            block = await source.queue.get()
            if isinstance(block, MonitorInputError):
                await context.abort(block.code, str(block))
            if session is None:
                session = MonitorSession(
                    catalog,
                    extract,
                    max_audio_s=max_audio_s,
                    report_interval_s=source.config.report_interval_s,
                )
            if isinstance(block, _End):
                break
            assert isinstance(block, np.ndarray)
            try:
                events = await session.push(block)
            except MonitorInputError as exc:
                await context.abort(exc.code, str(exc))
            for event in events:
                yield event
        if session is None or not session.heard_audio:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "no audio given: the stream ended before any"
            )
        assert session is not None
        for event in await session.finish():
            yield event
        log.info(
            "monitor %s ended after %.0f s of audio",
            source.config.stream_name or "(unnamed)",
            session.seconds,
        )
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump
        await source.close()
