"""The transcoder: a worker of its own that makes delivery copies of indexed tracks.

It reads earmark.track.indexed through its own durable consumer, so it scales
apart from ingest (`python -m earmark_ingest.transcoder`, one Deployment in
Kubernetes), stores each rendition next to the source in the blob store, and
announces them on earmark.renditions.ready. Re-running it for a track
overwrites the same keys, so redelivery is harmless.
"""

from __future__ import annotations

import asyncio
import logging

from earmark.v1 import common_pb2, events_pb2
from earmark_runtime import bus
from earmark_runtime.audio import DECODE_TIMEOUT_S, AudioDecodeError, decode_audio
from earmark_runtime.blobs import BlobNotFoundError
from earmark_runtime.server import run_server
from earmark_runtime.service import ServiceContext, start_context

from .renditions import (
    TRANSCODE_TIMEOUT_S,
    RenditionError,
    RenditionSpec,
    parse_specs,
    transcode,
)

log = logging.getLogger(__name__)


class Transcoder:
    def __init__(self, ctx: ServiceContext, specs: list[RenditionSpec]) -> None:
        self._ctx = ctx
        self._specs = specs

    async def handle(self, event: events_pb2.TrackIndexed, delivery: bus.Delivery) -> None:
        if not event.blob_key:
            raise bus.PermanentError(f"track {event.track_id} names no source blob")
        try:
            source = await self._ctx.blob_store().get(event.blob_key)
        except BlobNotFoundError:
            log.info("track %s is gone (deleted?); nothing to transcode", event.track_id)
            return
        ready = events_pb2.RenditionsReady(track_id=event.track_id)
        for spec in self._specs:
            await delivery.still_working()
            try:
                settings = self._ctx.settings
                data = await transcode(
                    source, spec, ffmpeg=settings.ffmpeg, memory_mb=settings.ffmpeg_memory_mb
                )
                decoded = await decode_audio(
                    data,
                    sample_rate_hz=8000,
                    ffmpeg=settings.ffmpeg,
                    memory_mb=settings.ffmpeg_memory_mb,
                )
            except (RenditionError, AudioDecodeError) as exc:
                raise bus.PermanentError(str(exc)) from exc
            await self._ctx.blob_store().put(spec.blob_key(event.track_id), data)
            ready.renditions.append(
                common_pb2.Rendition(
                    name=spec.name,
                    format=spec.format,
                    bitrate_kbps=spec.bitrate_kbps,
                    size_bytes=len(data),
                    duration_s=decoded.duration_s,
                )
            )
        await bus.publish(self._ctx.js, bus.RENDITIONS_READY, ready, f"renditions:{event.track_id}")


async def run() -> None:
    ctx = await start_context("transcoder", use_blobs=True)
    specs = parse_specs(ctx.settings.renditions)
    worker = Transcoder(ctx, specs)
    ctx.consumers.append(
        bus.Consumer(
            ctx.js,
            role="transcoder",
            subject=bus.TRACK_INDEXED,
            message_type=events_pb2.TrackIndexed,
            handler=worker.handle,
            concurrency=ctx.settings.workers,
            ack_wait_s=120.0,
            # Each rendition is bounded by ffmpeg's own limits (encode, then check);
            # the guard on the whole handler must not cut a long track's last one.
            handler_timeout_s=len(specs) * (TRANSCODE_TIMEOUT_S + DECODE_TIMEOUT_S) + 60.0,
        )
    )
    # No API of its own: the gRPC server carries health and reflection for probes.
    await run_server(
        bind=ctx.settings.grpc_bind,
        full_service_names=[],
        register=lambda server: None,
        health_checks=ctx.health_checks(),
        keys=ctx.keys,
        tls=ctx.tls,
        background=ctx.background_jobs(),
        on_shutdown=ctx.close,
        max_inflight=ctx.settings.max_inflight,
    )


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
