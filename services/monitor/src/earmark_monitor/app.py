"""The monitor service: registered streams, their play log, and the replica's watchers."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any
from urllib.parse import urlparse

import grpc
from google.protobuf import timestamp_pb2

from earmark.v1 import common_pb2, monitor_pb2, monitor_pb2_grpc, search_pb2_grpc
from earmark_runtime.live_audio import URL_PROTOCOLS
from earmark_runtime.server import run_server
from earmark_runtime.service import ServiceContext, dial, start_context
from earmark_runtime.telemetry import client_interceptors

from .playlog import STREAM_NAME
from .schema import MIGRATIONS, SCHEMA
from .store import PlayLog, StreamExistsError, StreamRow, StreamStore
from .worker import WatchScheduler, request_watch

log = logging.getLogger(__name__)
SERVICE_NAME = monitor_pb2.DESCRIPTOR.services_by_name["MonitorService"].full_name
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def _stamp(moment: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _moment(stamp: timestamp_pb2.Timestamp, present: bool) -> dt.datetime | None:
    return stamp.ToDatetime(tzinfo=dt.UTC) if present else None


def stream_proto(row: StreamRow, now: dt.datetime) -> monitor_pb2.MonitoredStream:
    return monitor_pb2.MonitoredStream(
        name=row.name,
        url=row.url,
        registered_at=_stamp(row.registered_at),
        watched_by=row.watched_by(now),
        heard_at=_stamp(row.heard_at),
        last_error=row.last_error or ("the file ended" if row.source_ended_at else ""),
    )


def play_proto(row: dict[str, Any]) -> monitor_pb2.Play:
    return monitor_pb2.Play(
        play_id=row["play_id"],
        stream_name=row["stream_name"],
        track=common_pb2.Track(
            track_id=row["track_id"],
            external_id=row["external_id"],
            metadata=common_pb2.TrackMetadata(title=row["title"], artist=row["artist"]),
            duration_s=row["duration_s"],
        ),
        started_at=_stamp(row["started_at"]),
        ended_at=_stamp(row["ended_at"]),
        track_offset_s=row["track_offset_s"],
        confidence=row["confidence"],
        playing=row["playing"],
    )


def url_problem(url: str) -> str:
    """Why a stream URL is refused, or "" when it is fine."""
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme not in URL_PROTOCOLS:
        return "url must be http://, https:// or file:// (ffmpeg reads it)"
    if scheme == "file" and (parsed.netloc not in ("", "localhost") or not parsed.path):
        return "a file:// url needs an absolute path: file:///path/to/show.mp3"
    if scheme != "file" and not parsed.netloc:
        return "the url names no host"
    return ""


def _page_token(row: dict[str, Any]) -> str:
    micros = int(row["started_at"].timestamp() * 1_000_000)
    return f"{micros}_{row['play_id']}"


def _parse_token(token: str) -> tuple[dt.datetime, str]:
    micros, play_id = token.split("_", 1)
    return dt.datetime.fromtimestamp(int(micros) / 1_000_000, dt.UTC), play_id


class MonitorServicer(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self, ctx: ServiceContext, streams: StreamStore, plays: PlayLog) -> None:
        self._ctx = ctx
        self._streams = streams
        self._plays = plays

    async def _check_name(self, name: str, context: grpc.aio.ServicerContext) -> None:
        if not STREAM_NAME.match(name):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "stream name must be 1-64 letters, digits, '-' or '_'",
            )

    async def RegisterStream(
        self, request: monitor_pb2.RegisterStreamRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.RegisterStreamResponse:
        await self._check_name(request.name, context)
        problem = url_problem(request.url)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            row, created = await self._streams.register(request.name, request.url)
        except StreamExistsError as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
            raise AssertionError("unreachable") from exc
        if created:
            log.info("registered stream %s: %s", row.name, row.url)
            try:
                await request_watch(self._ctx.js, row.name, row.generation, row.claims)
            except Exception as exc:
                # The reconciler of any replica sends it within seconds.
                log.warning("could not queue stream %s yet (%s)", row.name, exc)
        return monitor_pb2.RegisterStreamResponse(stream=stream_proto(row, dt.datetime.now(dt.UTC)))

    async def ListStreams(
        self, request: monitor_pb2.ListStreamsRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.ListStreamsResponse:
        now = dt.datetime.now(dt.UTC)
        rows = await self._streams.all()
        return monitor_pb2.ListStreamsResponse(streams=[stream_proto(r, now) for r in rows])

    async def RemoveStream(
        self, request: monitor_pb2.RemoveStreamRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.RemoveStreamResponse:
        await self._check_name(request.name, context)
        if not await self._streams.remove(request.name):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no stream {request.name}")
        log.info("removed stream %s", request.name)
        return monitor_pb2.RemoveStreamResponse()

    async def ListPlays(
        self, request: monitor_pb2.ListPlaysRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.ListPlaysResponse:
        await self._check_name(request.stream_name, context)
        since = _moment(request.since, request.HasField("since"))
        until = _moment(request.until, request.HasField("until"))
        if since is not None and until is not None and until <= since:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "until must be after since")
        after = None
        if request.page_token:
            try:
                after = _parse_token(request.page_token)
            except ValueError:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed page_token")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        rows = await self._plays.between(request.stream_name, since, until, after, size)
        return monitor_pb2.ListPlaysResponse(
            plays=[play_proto(r) for r in rows],
            next_page_token=_page_token(rows[-1]) if len(rows) == size else "",
        )


async def run() -> None:
    ctx = await start_context("monitor", migrations=[(SCHEMA, MIGRATIONS)])
    streams, plays = StreamStore(ctx.db()), PlayLog(ctx.db())
    channel = dial(ctx, ctx.settings.search_addr, client_interceptors(ctx.settings.api_key))
    scheduler = WatchScheduler(
        js=ctx.js,
        streams=streams,
        plays=plays,
        search=search_pb2_grpc.SearchServiceStub(channel),
        capacity=ctx.settings.monitor_streams,
        api_key=ctx.settings.api_key,
        ffmpeg=ctx.settings.ffmpeg,
    )
    log.info("replica %s watches up to %d streams", scheduler.replica, ctx.settings.monitor_streams)
    servicer = MonitorServicer(ctx, streams, plays)
    checks = ctx.health_checks()

    async def scheduler_ok() -> bool:
        return scheduler.healthy

    checks["consumer:" + "monitor-streams-watch"] = scheduler_ok

    async def shutdown() -> None:
        await scheduler.stop()  # streams go back to the other replicas at once
        await ctx.close()
        await channel.close()

    await run_server(
        bind=ctx.settings.grpc_bind,
        full_service_names=[SERVICE_NAME],
        register=lambda server: monitor_pb2_grpc.add_MonitorServiceServicer_to_server(
            servicer, server
        ),
        health_checks=checks,
        keys=ctx.keys,
        tls=ctx.tls,
        background=[scheduler.run],
        on_shutdown=shutdown,
    )
