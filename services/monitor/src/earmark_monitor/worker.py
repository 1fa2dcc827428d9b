"""Watching registered streams: work shared over replicas through JetStream.

Each registered stream is one `WatchStream` message on earmark.streams.watch,
read through one durable pull consumer that every monitor replica shares. A
replica fetches only while it has a free slot (EARMARK_MONITOR_STREAMS), and
holds each message for as long as it watches the stream: every HEARTBEAT_S it
marks the message in progress (ack_wait is ACK_WAIT_S) and renews the
stream's lease in PostgreSQL. So when a replica dies, the message comes back
within seconds to another replica, which waits out the dead one's lease and
takes the stream over. The lease is the fence: a replica that lost it stops,
and every play-log write checks it. A copy of the holder's message (same
stream sequence) waits for the lease; any other copy of a held stream's
message is a stray duplicate and is dropped. Streams nobody holds for
RECONCILE_GRACE_S get a new message (a lost message, a file that ended is
not watched again). RemoveStream deletes the row; the holder sees it at its
next renewal, stops and acks.

`bus.Consumer` is not used: it fetches a batch and waits for all its handlers
before fetching again, which suits short jobs, not ones that last for days.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Final

import grpc
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from earmark.v1 import common_pb2, events_pb2, search_pb2, search_pb2_grpc
from earmark_runtime import bus
from earmark_runtime.audio import AudioDecodeError
from earmark_runtime.live_audio import LiveDecoder
from earmark_runtime.telemetry import inject_headers

from .playlog import StreamClock, record_of, stream_subject
from .store import Lease, PlayLog, StreamStore

log = logging.getLogger(__name__)

WATCH_SUBJECT: Final = "earmark.streams.watch"
DURABLE: Final = "monitor-streams-watch"
ACK_WAIT_S: Final = 6.0
LEASE_S: Final = 6.0
HEARTBEAT_S: Final = 1.5
RECONCILE_S: Final = 5.0
RECONCILE_GRACE_S: Final = 15.0
SAMPLE_RATE_HZ: Final = 8000
CHUNK_BYTES: Final = SAMPLE_RATE_HZ  # 0.5 s of 16-bit mono
HEARD_EVERY_S: Final = 5.0
MAX_BACKOFF_S: Final = 30.0


def replica_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def watch_message_id(name: str, generation: int, claims: int) -> str:
    return f"watch:{name}:{generation}:{claims}"


async def request_watch(js: JetStreamContext, name: str, generation: int, claims: int) -> None:
    await bus.publish(
        js,
        WATCH_SUBJECT,
        events_pb2.WatchStream(name=name, generation=generation),
        watch_message_id(name, generation, claims),
    )


class StreamLost(Exception):
    """Another replica holds the stream now."""


class StreamRemoved(Exception):
    """The stream was removed (or registered again)."""


class SourceEnded(Exception):
    """A file source played to its end."""


class StreamWatcher:
    """One stream, for as long as this replica holds it: source -> search.Monitor -> events."""

    def __init__(
        self,
        *,
        name: str,
        url: str,
        generation: int,
        holder: str,
        js: JetStreamContext,
        streams: StreamStore,
        plays: PlayLog,
        search: search_pb2_grpc.SearchServiceStub,
        api_key: str,
        ffmpeg: str,
    ) -> None:
        self.name = name
        self._url = url
        self._generation = generation
        self._holder = holder
        self._js = js
        self._streams = streams
        self._plays = plays
        self._search = search
        self._api_key = api_key
        self._ffmpeg = ffmpeg
        self._subject = stream_subject(name)

    async def run(self) -> None:
        """Watch until cancelled; reconnects to the source and to search with a backoff."""
        backoff = 1.0
        while True:
            try:
                heard = await self._connection()
            except SourceEnded:
                await self._streams.note(self.name, self._holder, source_ended=True)
                log.info("stream %s: the file ended; it is not watched again", self.name)
                return
            except AudioDecodeError as exc:
                heard = False
                await self._failed(f"source: {exc}")
            except grpc.aio.AioRpcError as exc:
                heard = False
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    continue  # the call's audio limit: reconnect at once
                await self._failed(f"search: {exc.code().name}: {exc.details()}")
            backoff = 1.0 if heard else min(backoff * 2, MAX_BACKOFF_S)
            await asyncio.sleep(backoff)

    async def _failed(self, error: str) -> None:
        log.warning("stream %s: %s", self.name, error)
        with contextlib.suppress(Exception):
            await self._streams.note(self.name, self._holder, error=error[:500])

    async def _connection(self) -> bool:
        """One connection to the source and one Monitor call; whether audio flowed."""
        decoder = await LiveDecoder.from_url(
            self._url, sample_rate_hz=SAMPLE_RATE_HZ, ffmpeg=self._ffmpeg
        )
        clock: list[StreamClock] = []
        plays: dict[int, str] = {}
        ended: list[AudioDecodeError | None] = []
        try:
            metadata = list(inject_headers().items())
            if self._api_key:
                metadata.append(("x-api-key", self._api_key))
            call = self._search.Monitor(
                self._requests(decoder, clock, ended), metadata=tuple(metadata)
            )
            try:
                async for event in call:
                    await self._handle(event, clock[0], plays)
            except grpc.aio.AioRpcError as exc:
                # No audio at all: the source's failure says more than search's answer.
                if not (ended and ended[0] and exc.code() == grpc.StatusCode.INVALID_ARGUMENT):
                    raise
        finally:
            await decoder.close()
        if ended and ended[0] is not None:
            raise ended[0]
        if ended and self._url.startswith("file:"):
            raise SourceEnded(self._url)
        return bool(clock)

    async def _requests(
        self,
        decoder: LiveDecoder,
        clock: list[StreamClock],
        ended: list[AudioDecodeError | None],
    ) -> AsyncIterator[search_pb2.MonitorRequest]:
        """The source's audio as Monitor requests; `ended` gets None at its end, or the
        error that stopped it (the call then ends cleanly, and plays end where last heard)."""
        yield search_pb2.MonitorRequest(config=search_pb2.MonitorConfig(stream_name=self.name))
        carry = b""
        noted = 0.0
        while True:
            try:
                data = await decoder.read(CHUNK_BYTES)
            except AudioDecodeError as exc:
                ended.append(exc)
                return
            if not data:
                break
            data = carry + data
            whole = len(data) - len(data) % 2
            carry = data[whole:]
            if not whole:
                continue
            now = time.time()
            if not clock:
                clock.append(StreamClock(now - whole / (2 * SAMPLE_RATE_HZ)))
            if now - noted > HEARD_EVERY_S:
                noted = now
                with contextlib.suppress(Exception):
                    await self._streams.note(self.name, self._holder, heard=True)
            yield search_pb2.MonitorRequest(
                pcm=common_pb2.PcmAudio(
                    samples=data[:whole], sample_rate_hz=SAMPLE_RATE_HZ, channels=1
                )
            )
        ended.append(None)

    async def _handle(
        self, event: search_pb2.MonitorEvent, clock: StreamClock, plays: dict[int, str]
    ) -> None:
        play_id = ""
        if event.type != search_pb2.MONITOR_EVENT_TYPE_UNKNOWN:
            record = record_of(event, clock)
            if event.type == search_pb2.MONITOR_EVENT_TYPE_STARTED:
                started = await self._plays.start(self.name, self._generation, self._holder, record)
                if started is None:
                    raise StreamLost(self.name)
                plays[event.play] = play_id = started
            elif event.play in plays:
                play_id = plays[event.play]
                if not await self._plays.update(
                    self.name, self._generation, self._holder, play_id, record
                ):
                    raise StreamLost(self.name)
        message = events_pb2.StreamEvent(stream_name=self.name, event=event, play_id=play_id)
        message.started_at.FromDatetime(clock.at(event.start_s))
        message.ended_at.FromDatetime(clock.at(event.end_s))
        kind = search_pb2.MonitorEventType.Name(event.type).removeprefix("MONITOR_EVENT_TYPE_")
        moment = int(clock.at(event.end_s).timestamp() * 1000)
        await bus.publish(
            self._js, self._subject, message, f"monitor:{self.name}:{play_id}:{kind}:{moment}"
        )


class WatchScheduler:
    """The replica's share of the registered streams (see the module docstring)."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        streams: StreamStore,
        plays: PlayLog,
        search: search_pb2_grpc.SearchServiceStub,
        capacity: int,
        api_key: str,
        ffmpeg: str,
    ) -> None:
        self._js = js
        self._streams = streams
        self._plays = plays
        self._search = search
        self._capacity = capacity
        self._api_key = api_key
        self._ffmpeg = ffmpeg
        self.replica = replica_name()
        self.healthy = False
        self._active: dict[str, tuple[asyncio.Task[None], Msg]] = {}
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()

    @property
    def watching(self) -> list[str]:
        return sorted(self._active)

    async def run(self) -> None:
        reconciler = asyncio.create_task(self._reconcile_forever())
        try:
            await self._fetch_forever()
        finally:
            reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconciler

    async def stop(self) -> None:
        """Hand every stream back at once: release the lease, nak the message for another."""
        self._stopping.set()
        for task, _msg in list(self._active.values()):
            task.cancel()
        await asyncio.gather(*(t for t, _ in self._active.values()), return_exceptions=True)

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ACK_WAIT_S,
            max_deliver=-1,  # a registered stream is never given up
            max_ack_pending=100_000,
            filter_subject=WATCH_SUBJECT,
        )
        return await self._js.pull_subscribe(
            WATCH_SUBJECT, durable=DURABLE, stream=bus.STREAM_NAME, config=config
        )

    async def _fetch_forever(self) -> None:
        sub: JetStreamContext.PullSubscription | None = None
        while not self._stopping.is_set():
            free = self._capacity - len(self._active)
            if free <= 0:
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), timeout=2.0)
                continue
            try:
                if sub is None:
                    sub = await self._subscribe()
                self.healthy = True
                msgs = await sub.fetch(batch=free, timeout=2.0)
            except (NatsTimeoutError, TimeoutError):
                continue
            except Exception as exc:
                self.healthy = False
                sub = None
                log.warning("watch consumer lost NATS (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                await self._take(msg)

    async def _take(self, msg: Msg) -> None:
        try:
            work = events_pb2.WatchStream.FromString(msg.data)
        except DecodeError:
            log.error("undecodable watch message dropped")
            await msg.term()
            return
        seq = int(msg.metadata.sequence.stream) if msg.metadata.sequence else 0
        held = self._active.get(work.name)
        if held is not None:
            # Ours already: a redelivery of the message we hold replaces it, a stray
            # duplicate goes away.
            own_seq = held[1].metadata.sequence.stream if held[1].metadata.sequence else -1
            if own_seq == seq:
                self._active[work.name] = (held[0], msg)
            else:
                await msg.ack()
            return
        try:
            claimed = await self._streams.claim(
                work.name, work.generation, self.replica, seq, LEASE_S
            )
            row = None if claimed else await self._streams.get(work.name)
        except Exception as exc:
            log.warning("cannot claim stream %s (%s); retrying", work.name, exc)
            await msg.nak(delay=2.0)
            return
        if not claimed:
            if row is None or row.generation != work.generation or row.source_ended_at:
                await msg.ack()  # removed, registered again, or finished
            elif row.message_seq == seq:
                # The holder's own message came back: it may have died. Wait out its lease.
                lease_until = row.lease_until or dt.datetime.now(dt.UTC)
                remaining = (lease_until - dt.datetime.now(dt.UTC)).total_seconds()
                await msg.nak(delay=max(0.5, remaining + 0.5))
            else:
                await msg.ack()  # a stray duplicate of a held stream's message
            return
        stream = await self._streams.get(work.name)
        if stream is None:
            await msg.ack()
            return
        watcher = StreamWatcher(
            name=work.name,
            url=stream.url,
            generation=work.generation,
            holder=self.replica,
            js=self._js,
            streams=self._streams,
            plays=self._plays,
            search=self._search,
            api_key=self._api_key,
            ffmpeg=self._ffmpeg,
        )
        log.info("watching stream %s (%s)", work.name, stream.url)
        task = asyncio.create_task(self._hold(watcher, work.generation))
        self._active[work.name] = (task, msg)

    async def _hold(self, watcher: StreamWatcher, generation: int) -> None:
        name = watcher.name
        watching = asyncio.create_task(watcher.run())
        outcome = "cancelled"
        try:
            while not watching.done():
                done, _ = await asyncio.wait({watching}, timeout=HEARTBEAT_S)
                if done:
                    break
                _task, msg = self._active[name]
                with contextlib.suppress(Exception):
                    await msg.in_progress()
                try:
                    lease = await self._streams.renew(name, generation, self.replica, LEASE_S)
                except Exception as exc:
                    log.warning("stream %s: lease not renewed (%s)", name, exc)
                    continue
                if lease is not Lease.HELD:
                    outcome = lease.value
                    break
            if watching.done():
                error = watching.exception()
                outcome = "lost" if isinstance(error, StreamLost) else "finished"
                if error is not None and not isinstance(error, StreamLost):
                    log.error("stream %s: watcher failed", name, exc_info=error)
                    outcome = "failed"
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watching
            _task, msg = self._active.pop(name)
            self._slot_freed.set()
            await self._settle(name, generation, msg, outcome)

    async def _settle(self, name: str, generation: int, msg: Msg, outcome: str) -> None:
        log.info("stopped watching stream %s: %s", name, outcome)
        with contextlib.suppress(Exception):
            if outcome in ("removed", "finished"):
                await msg.ack()
            elif outcome in ("cancelled", "failed"):
                # Shutting down (or a bug): give the stream to another replica now.
                await self._streams.release(name, generation, self.replica)
                await msg.nak(delay=0 if outcome == "cancelled" else 5.0)
            # "lost": another replica holds the stream, and maybe this very message.

    async def _reconcile_forever(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=RECONCILE_S)
            if self._stopping.is_set():
                return
            try:
                for row in await self._streams.unwatched(RECONCILE_GRACE_S):
                    await request_watch(self._js, row.name, row.generation, row.claims)
            except Exception as exc:
                log.warning("reconciling streams failed (%s); retrying", exc)
