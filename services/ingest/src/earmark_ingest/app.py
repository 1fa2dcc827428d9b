"""The ingest service: Upload and submission status over gRPC, status consumers, outbox."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator

import grpc

from earmark.v1 import common_pb2, events_pb2, ingest_pb2, ingest_pb2_grpc
from earmark_runtime import bus
from earmark_runtime.audio import AudioDecodeError, decode_audio
from earmark_runtime.blobs import BlobNotFoundError
from earmark_runtime.server import run_server
from earmark_runtime.service import ServiceContext, start_context
from earmark_runtime.streams import StreamTooLargeError, collect_header_and_chunks

from .renditions import find_spec, parse_specs
from .schema import MIGRATIONS, SCHEMA
from .submissions import FINGERPRINTED, INDEXED, NewSubmission, Submissions
from .tags import merge, read_tags
from .validation import Refusal, check_audio, check_content, check_tags

log = logging.getLogger(__name__)
SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
# Validation decodes at a low rate: enough to measure duration and level, and fast.
VALIDATION_RATE_HZ = 8000
OUTBOX_GRACE_S = 5.0
MAX_BATCH_IDS = 1000
DOWNLOAD_CHUNK_BYTES = 1024 * 1024


async def _refuse(context: grpc.aio.ServicerContext, refusal: Refusal) -> None:
    # The code travels in trailing metadata so that clients can branch on it.
    context.set_trailing_metadata((("earmark-rejection-code", refusal.code_name),))
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal.message)


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, ctx: ServiceContext, submissions: Submissions) -> None:
        self._ctx = ctx
        self._subs = submissions
        self._specs = parse_specs(ctx.settings.renditions)

    async def Upload(
        self,
        request_iterator: AsyncIterator[ingest_pb2.UploadRequest],
        context: grpc.aio.ServicerContext,
    ) -> ingest_pb2.UploadResponse:
        settings = self._ctx.settings
        try:
            header, data = await collect_header_and_chunks(
                request_iterator, context, limit_bytes=settings.max_upload_bytes
            )
        except StreamTooLargeError as exc:
            await _refuse(context, Refusal(common_pb2.REJECTION_CODE_TOO_LARGE, str(exc)))
            raise AssertionError("unreachable") from exc
        if not header.external_id.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "external_id is required")
        if not data:
            await _refuse(
                context,
                Refusal(common_pb2.REJECTION_CODE_NOT_AUDIO, "empty upload: no bytes received"),
            )
        try:
            decoded = await decode_audio(
                data,
                sample_rate_hz=VALIDATION_RATE_HZ,
                ffmpeg=settings.ffmpeg,
                max_seconds=settings.max_duration_s,
            )
        except AudioDecodeError as exc:
            await _refuse(context, Refusal(common_pb2.REJECTION_CODE_NOT_AUDIO, str(exc)))
            raise AssertionError("unreachable") from exc
        tags = merge(read_tags(data), header.metadata)
        refusal = check_audio(
            decoded, min_duration_s=settings.min_duration_s, max_duration_s=settings.max_duration_s
        ) or check_tags(tags, settings.required_tags)
        if refusal is None:
            refusal = await asyncio.to_thread(
                check_content,
                decoded,
                max_clipping=settings.max_clipping,
                music_check=settings.music_check,
            )
        if refusal is not None:
            await _refuse(context, refusal)
        sha = hashlib.sha256(data).hexdigest()
        new = NewSubmission(
            submission_id=str(uuid.uuid4()),
            external_id=header.external_id,
            filename=header.filename,
            metadata=common_pb2.TrackMetadata(
                title=tags.title,
                artist=tags.artist,
                album=tags.album,
                isrc=tags.isrc,
                extra=tags.extra,
            ),
            duration_s=decoded.duration_s,
            size_bytes=len(data),
            source_sha256=sha,
            source_format=decoded.container,
            blob_key=f"sources/{sha}",
        )
        # Blob first: a row never points at a missing blob. Same bytes, same key. A
        # failure here surfaces as UNAVAILABLE (see earmark_runtime.interceptors).
        await self._ctx.blob_store().put(new.blob_key, data)
        submission, created = await self._subs.create(new)
        if not created:
            return ingest_pb2.UploadResponse(submission=submission)
        try:
            await bus.publish(
                self._ctx.js,
                bus.SUBMISSION_RECEIVED,
                new.received_event(),
                f"received:{new.submission_id}",
            )
            await self._subs.mark_published(new.submission_id)
        except Exception:
            # The row is committed; the outbox sweeper publishes it shortly.
            log.warning("publish of %s deferred to the outbox", new.submission_id, exc_info=True)
        return ingest_pb2.UploadResponse(submission=submission)

    async def GetSubmission(
        self, request: ingest_pb2.GetSubmissionRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.GetSubmissionResponse:
        if not _is_uuid(request.submission_id):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"submission_id {request.submission_id!r} is not a UUID",
            )
        found = await self._subs.get_many([request.submission_id])
        if not found:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no submission {request.submission_id}")
        return ingest_pb2.GetSubmissionResponse(submission=found[0])

    async def BatchGetSubmissions(
        self, request: ingest_pb2.BatchGetSubmissionsRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.BatchGetSubmissionsResponse:
        ids = list(request.submission_ids)
        if len(ids) > MAX_BATCH_IDS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"at most {MAX_BATCH_IDS} ids per call, got {len(ids)}",
            )
        bad = [i for i in ids if not _is_uuid(i)]
        if bad:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"not UUIDs: {', '.join(bad[:5])}"
            )
        return ingest_pb2.BatchGetSubmissionsResponse(submissions=await self._subs.get_many(ids))

    async def Download(
        self, request: ingest_pb2.DownloadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ingest_pb2.DownloadResponse]:
        if not _is_uuid(request.track_id):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"track_id {request.track_id!r} is not a UUID"
            )
        found = await self._subs.get_many([request.track_id])
        if not found or found[0].state != INDEXED:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no track {request.track_id}")
        wanted = request.rendition or "source"
        if wanted == "source":
            key = await self._subs.blob_key_of(request.track_id)
            info = ingest_pb2.DownloadInfo(
                name="source", format=found[0].filename.rpartition(".")[2]
            )
        else:
            spec = find_spec(self._specs, wanted)
            if spec is None:
                names = ", ".join(["source", *(s.name for s in self._specs)])
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"no rendition {wanted!r}; have {names}"
                )
            assert spec is not None
            key = spec.blob_key(request.track_id)
            info = ingest_pb2.DownloadInfo(name=spec.name, format=spec.format)
        try:
            data = await self._ctx.blob_store().get(key)
        except BlobNotFoundError:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"{wanted} of track {request.track_id} is not ready yet; retry shortly",
            )
            return
        info.size_bytes = len(data)
        yield ingest_pb2.DownloadResponse(info=info)
        for start in range(0, len(data), DOWNLOAD_CHUNK_BYTES):
            yield ingest_pb2.DownloadResponse(chunk=data[start : start + DOWNLOAD_CHUNK_BYTES])


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class StatusTracker:
    """Moves submissions through their states as the other services report."""

    def __init__(self, ctx: ServiceContext, submissions: Submissions) -> None:
        self._ctx = ctx
        self._subs = submissions

    async def on_extracted(self, event: events_pb2.FingerprintExtracted, _d: bus.Delivery) -> None:
        await self._subs.advance(event.submission.submission_id, FINGERPRINTED)

    async def on_indexed(self, event: events_pb2.TrackIndexed, _d: bus.Delivery) -> None:
        await self._subs.advance(event.submission_id, INDEXED, event.track_id)

    async def on_rejected(self, event: events_pb2.SubmissionRejected, _d: bus.Delivery) -> None:
        if not _is_uuid(event.submission_id):
            raise bus.PermanentError(f"bad submission id {event.submission_id!r}")
        await self._subs.reject(event.submission_id, event.rejection)
        blob_key = await self._subs.blob_key_of(event.submission_id)
        # A rejected submission keeps nothing, unless another live submission shares the bytes.
        if blob_key and not await self._subs.blob_still_needed(blob_key, event.submission_id):
            await self._ctx.blob_store().delete(blob_key)

    async def on_deleted(self, event: events_pb2.TrackDeleted, _d: bus.Delivery) -> None:
        """A deleted track keeps no blobs: renditions, and the source unless shared."""
        store = self._ctx.blob_store()
        for key in await store.keys():
            if key.startswith(f"renditions/{event.track_id}/"):
                await store.delete(key)
        blob_key = await self._subs.blob_key_of(event.track_id)
        await self._subs.mark_deleted(event.track_id)
        if blob_key and not await self._subs.blob_still_needed(blob_key, event.track_id):
            await store.delete(blob_key)

    async def republish_outbox(self) -> None:
        while True:
            await asyncio.sleep(OUTBOX_GRACE_S)
            with contextlib.suppress(Exception):
                for event in await self._subs.unpublished(OUTBOX_GRACE_S):
                    await bus.publish(
                        self._ctx.js,
                        bus.SUBMISSION_RECEIVED,
                        event,
                        f"received:{event.submission_id}",
                    )
                    await self._subs.mark_published(event.submission_id)
                    log.info("outbox published %s", event.submission_id)


async def run() -> None:
    ctx = await start_context("ingest", migrations=[(SCHEMA, MIGRATIONS)], use_blobs=True)
    submissions = Submissions(ctx.db())
    tracker = StatusTracker(ctx, submissions)
    concurrency = ctx.settings.workers * 4
    ctx.consumers += [
        bus.Consumer(
            ctx.js,
            role="ingest",
            subject=bus.FINGERPRINT_EXTRACTED,
            message_type=events_pb2.FingerprintExtracted,
            handler=tracker.on_extracted,
            concurrency=concurrency,
        ),
        bus.Consumer(
            ctx.js,
            role="ingest",
            subject=bus.TRACK_INDEXED,
            message_type=events_pb2.TrackIndexed,
            handler=tracker.on_indexed,
            concurrency=concurrency,
        ),
        bus.Consumer(
            ctx.js,
            role="ingest",
            subject=bus.SUBMISSION_REJECTED,
            message_type=events_pb2.SubmissionRejected,
            handler=tracker.on_rejected,
            concurrency=concurrency,
        ),
        bus.Consumer(
            ctx.js,
            role="ingest",
            subject=bus.TRACK_DELETED,
            message_type=events_pb2.TrackDeleted,
            handler=tracker.on_deleted,
        ),
    ]
    servicer = IngestServicer(ctx, submissions)
    await run_server(
        bind=ctx.settings.grpc_bind,
        full_service_names=[SERVICE_NAME],
        register=lambda server: ingest_pb2_grpc.add_IngestServiceServicer_to_server(
            servicer, server
        ),
        health_checks=ctx.health_checks(),
        background=[*ctx.background_jobs(), tracker.republish_outbox],
        on_shutdown=ctx.close,
    )
