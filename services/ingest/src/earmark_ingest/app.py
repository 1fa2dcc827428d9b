"""The ingest service: Upload and submission status over gRPC, status consumers, outbox."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from earmark.v1 import common_pb2, events_pb2, fingerprint_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from earmark_runtime import bus
from earmark_runtime.blobs import BlobNotFoundError
from earmark_runtime.ids import is_uuid, require_uuid
from earmark_runtime.server import run_server
from earmark_runtime.service import ServiceContext, dial, start_context
from earmark_runtime.streams import StreamTooLargeError, collect_header_and_chunks
from earmark_runtime.telemetry import client_interceptors

from .intake import RefusedError, accept
from .reindexing import current_algorithm_version, request_reindex
from .renditions import RenditionSpec, find_spec, parse_specs
from .schema import MIGRATIONS, SCHEMA
from .submissions import FINGERPRINTED, INDEXED, Submissions
from .validation import Refusal

log = logging.getLogger(__name__)
SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
OUTBOX_GRACE_S = 5.0
MAX_BATCH_IDS = 1000
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
WATCH_POLL_S = 0.5
WATCH_LIMIT_S = 3600.0
WATCH_QUIET_S = 60.0


async def _refuse(context: grpc.aio.ServicerContext, refusal: Refusal) -> None:
    # The code travels in trailing metadata so that clients can branch on it.
    context.set_trailing_metadata((("earmark-rejection-code", refusal.code_name),))
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal.message)


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(
        self,
        ctx: ServiceContext,
        submissions: Submissions,
        fingerprinter: fingerprint_pb2_grpc.FingerprintServiceStub | None = None,
    ) -> None:
        self._ctx = ctx
        self._subs = submissions
        self._specs = parse_specs(ctx.settings.renditions)
        self._fingerprinter = fingerprinter

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
        try:
            submission = await accept(
                self._ctx,
                self._subs,
                data=data,
                external_id=header.external_id,
                filename=header.filename,
                metadata=header.metadata,
            )
        except RefusedError as exc:
            await _refuse(context, exc.refusal)
            raise AssertionError("unreachable") from exc
        return ingest_pb2.UploadResponse(submission=submission)

    async def GetSubmission(
        self, request: ingest_pb2.GetSubmissionRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.GetSubmissionResponse:
        await require_uuid(context, "submission_id", request.submission_id)
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
        bad = [i for i in ids if not is_uuid(i)]
        if bad:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"not UUIDs: {', '.join(bad[:5])}"
            )
        return ingest_pb2.BatchGetSubmissionsResponse(submissions=await self._subs.get_many(ids))

    async def WatchSubmission(
        self, request: ingest_pb2.WatchSubmissionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ingest_pb2.WatchSubmissionResponse]:
        await require_uuid(context, "submission_id", request.submission_id)
        last: bytes = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WATCH_LIMIT_S
        changed_at = loop.time()
        # Polling the row keeps every replica able to answer, whichever one took the work.
        while asyncio.get_running_loop().time() < deadline:
            found = await self._subs.get_many([request.submission_id])
            if not found:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND, f"no submission {request.submission_id}"
                )
            current = found[0]
            snapshot = current.SerializeToString(deterministic=True)
            if snapshot != last:
                last = snapshot
                changed_at = loop.time()
                yield ingest_pb2.WatchSubmissionResponse(submission=current)
            if _settled(current):
                return
            # Indexed, and the optional stages (features, renditions) fell silent:
            # a worker of theirs may be off, so stop rather than hang.
            if current.state == INDEXED and loop.time() - changed_at > WATCH_QUIET_S:
                return
            await asyncio.sleep(WATCH_POLL_S)

    async def LookupSubmissions(
        self, request: ingest_pb2.LookupSubmissionsRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.LookupSubmissionsResponse:
        shas = [s.lower() for s in request.source_sha256]
        if len(shas) > MAX_BATCH_IDS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_BATCH_IDS} digests per call"
            )
        bad = [s for s in shas if len(s) != 64 or any(c not in "0123456789abcdef" for c in s)]
        if bad:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"not SHA-256 hex digests: {', '.join(bad[:3])}"
            )
        return ingest_pb2.LookupSubmissionsResponse(submissions=await self._subs.live_by_sha(shas))

    async def Download(
        self, request: ingest_pb2.DownloadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ingest_pb2.DownloadResponse]:
        await require_uuid(context, "track_id", request.track_id)
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

    async def Reindex(
        self, request: ingest_pb2.ReindexRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.ReindexResponse:
        if self._fingerprinter is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "this ingest has no fingerprint service"
            )
        assert self._fingerprinter is not None
        try:
            version = await current_algorithm_version(self._fingerprinter)
        except grpc.aio.AioRpcError as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "cannot ask the fingerprint service for its algorithm version "
                f"({exc.code().name}); retry shortly",
            )
            raise AssertionError("unreachable") from exc
        return await request_reindex(
            self._ctx.js, self._subs, version, force=request.force, dry_run=request.dry_run
        )


FINAL = {common_pb2.SUBMISSION_STATE_REJECTED, common_pb2.SUBMISSION_STATE_DELETED}
ALL_STAGES = {"validated", "fingerprinted", "indexed", "analysed", "transcoded"}


def _settled(sub: common_pb2.Submission) -> bool:
    """Final, and for an indexed track every later stage has reported."""
    if sub.state in FINAL:
        return True
    return sub.state == INDEXED and {s.stage for s in sub.stages} >= ALL_STAGES


class BulkIntake:
    """Consumer of earmark.ingest.requested: files read from EARMARK_INGEST_ROOT."""

    def __init__(self, ctx: ServiceContext, submissions: Submissions) -> None:
        self._ctx = ctx
        self._subs = submissions

    def _resolve(self, path: str) -> Path:
        root_setting = self._ctx.settings.ingest_root
        if not root_setting:
            raise bus.PermanentError("bulk ingestion by events is off: set EARMARK_INGEST_ROOT")
        root = Path(root_setting).resolve()
        candidate = (root / path.lstrip("/")).resolve()
        # Never outside the root, whatever the path says (.., symlinks).
        if candidate != root and root not in candidate.parents:
            raise bus.PermanentError(f"{path!r} is outside the ingest root")
        return candidate

    async def handle(self, event: events_pb2.IngestRequested, _d: bus.Delivery) -> None:
        path = self._resolve(event.path)
        external_id = event.external_id or event.path
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            await self._subs.record_refused(
                external_id=external_id,
                filename=path.name,
                code=common_pb2.REJECTION_CODE_NOT_AUDIO,
                message=f"cannot read {event.path}: {type(exc).__name__}",
            )
            return
        try:
            await accept(
                self._ctx, self._subs, data=data, external_id=external_id,
                filename=path.name, metadata=event.metadata,
            )  # fmt: skip
        except RefusedError as exc:
            await self._subs.record_refused(
                external_id=external_id, filename=path.name,
                code=exc.refusal.code, message=exc.refusal.message,
            )  # fmt: skip


class StatusTracker:
    """Moves submissions through their states as the other services report."""

    def __init__(self, ctx: ServiceContext, submissions: Submissions) -> None:
        self._ctx = ctx
        self._subs = submissions

    async def on_extracted(self, event: events_pb2.FingerprintExtracted, d: bus.Delivery) -> None:
        submission_id = event.submission.submission_id
        await self._subs.advance(submission_id, FINGERPRINTED)
        await self._subs.mark_stage(submission_id, "fingerprinted", d.published_at)
        # Also after a reindex: which algorithm the track's landmarks now come from.
        await self._subs.record_fingerprint(submission_id, event.landmarks.algorithm_version)

    async def on_indexed(self, event: events_pb2.TrackIndexed, d: bus.Delivery) -> None:
        await self._subs.advance(event.submission_id, INDEXED, event.track_id)
        await self._subs.mark_stage(event.submission_id, "indexed", d.published_at)

    async def on_analysed(self, event: events_pb2.FeaturesComputed, d: bus.Delivery) -> None:
        await self._subs.mark_stage(event.submission_id, "analysed", d.published_at)

    async def on_transcoded(self, event: events_pb2.RenditionsReady, d: bus.Delivery) -> None:
        keys = [
            RenditionSpec(r.name, r.format, r.bitrate_kbps).blob_key(event.track_id)
            for r in event.renditions
        ]
        await self._subs.record_renditions(event.track_id, keys)
        await self._subs.mark_stage(event.track_id, "transcoded", d.published_at)

    async def on_rejected(self, event: events_pb2.SubmissionRejected, _d: bus.Delivery) -> None:
        if not is_uuid(event.submission_id):
            raise bus.PermanentError(f"bad submission id {event.submission_id!r}")
        await self._subs.reject(event.submission_id, event.rejection)
        blob_key = await self._subs.blob_key_of(event.submission_id)
        # A rejected submission keeps nothing, unless another live submission shares the bytes.
        if blob_key and not await self._subs.blob_still_needed(blob_key, event.submission_id):
            await self._ctx.blob_store().delete(blob_key)

    async def on_deleted(self, event: events_pb2.TrackDeleted, _d: bus.Delivery) -> None:
        """A deleted track keeps no blobs: renditions, and the source unless shared."""
        store = self._ctx.blob_store()
        # The keys recorded when the renditions were announced, and those the current
        # settings would make, in case the transcoder has not reported yet.
        recorded = await self._subs.rendition_keys(event.track_id)
        current = [
            spec.blob_key(event.track_id) for spec in parse_specs(self._ctx.settings.renditions)
        ]
        for key in sorted({*recorded, *current}):
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
    # Status updates are small and quick; many run at once.
    status_routes: list[tuple[str, type[Any], Any]] = [
        (bus.FINGERPRINT_EXTRACTED, events_pb2.FingerprintExtracted, tracker.on_extracted),
        (bus.TRACK_INDEXED, events_pb2.TrackIndexed, tracker.on_indexed),
        (bus.SUBMISSION_REJECTED, events_pb2.SubmissionRejected, tracker.on_rejected),
        (bus.FEATURES_COMPUTED, events_pb2.FeaturesComputed, tracker.on_analysed),
        (bus.RENDITIONS_READY, events_pb2.RenditionsReady, tracker.on_transcoded),
        (bus.TRACK_DELETED, events_pb2.TrackDeleted, tracker.on_deleted),
    ]
    ctx.consumers += [
        bus.Consumer(
            ctx.js,
            role="ingest",
            subject=subject,
            message_type=message_type,
            handler=handler,
            concurrency=ctx.settings.workers * 4,
        )
        for subject, message_type, handler in status_routes
    ]
    ctx.consumers.append(
        bus.Consumer(
            ctx.js,
            role="ingest",
            subject=bus.INGEST_REQUESTED,
            message_type=events_pb2.IngestRequested,
            handler=BulkIntake(ctx, submissions).handle,
            concurrency=ctx.settings.workers,
            ack_wait_s=120.0,
        )
    )
    # Reindex asks fingerprint which algorithm version it runs.
    channel = dial(ctx, ctx.settings.fingerprint_addr, client_interceptors(ctx.settings.api_key))
    servicer = IngestServicer(
        ctx, submissions, fingerprint_pb2_grpc.FingerprintServiceStub(channel)
    )

    async def shutdown() -> None:
        await ctx.close()
        await channel.close()

    await run_server(
        bind=ctx.settings.grpc_bind,
        full_service_names=[SERVICE_NAME],
        register=lambda server: ingest_pb2_grpc.add_IngestServiceServicer_to_server(
            servicer, server
        ),
        health_checks=ctx.health_checks(),
        keys=ctx.keys,
        tls=ctx.tls,
        background=[*ctx.background_jobs(), tracker.republish_outbox],
        on_shutdown=shutdown,
        max_inflight=ctx.settings.max_inflight,
    )
