"""The fingerprint service: ExtractFingerprint over gRPC, and the submission consumer."""

from __future__ import annotations

import asyncio
import logging
import math
import time

import grpc

from earmark.v1 import common_pb2, events_pb2, fingerprint_pb2, fingerprint_pb2_grpc
from earmark_runtime import bus, reindex
from earmark_runtime.audio import AudioDecodeError
from earmark_runtime.blobs import BlobNotFoundError
from earmark_runtime.server import run_server
from earmark_runtime.service import ServiceContext, start_context

from .extraction import (
    fingerprint,
    neural_fingerprint,
    rescaled_fingerprints,
    rescaled_neural_fingerprints,
    samples_of,
    samples_of_decoded,
    to_decoded,
    warm_up,
)

log = logging.getLogger(__name__)
SERVICE_NAME = fingerprint_pb2.DESCRIPTOR.services_by_name["FingerprintService"].full_name


class FingerprintServicer(fingerprint_pb2_grpc.FingerprintServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def ExtractFingerprint(
        self,
        request: fingerprint_pb2.ExtractFingerprintRequest,
        context: grpc.aio.ServicerContext,
    ) -> fingerprint_pb2.ExtractFingerprintResponse:
        settings = self._ctx.settings
        if not math.isfinite(request.max_duration_s) or request.max_duration_s < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"max_duration_s must be a number of seconds >= 0, got {request.max_duration_s}",
            )
        query = request.purpose != fingerprint_pb2.EXTRACTION_PURPOSE_INDEX
        if request.HasField("decoded") and request.HasField("audio"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "set audio or decoded, not both")
        if (request.HasField("decoded") or request.return_decoded) and not query:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "decoded and return_decoded apply to queries, not to indexing",
            )
        max_seconds = min(
            request.max_duration_s or settings.max_duration_s, settings.max_duration_s
        )
        try:
            if request.HasField("decoded"):
                samples = samples_of_decoded(request.decoded, max_seconds=max_seconds)
            else:
                samples = await samples_of(
                    request.audio,
                    ffmpeg=settings.ffmpeg,
                    max_seconds=max_seconds,
                    memory_mb=settings.ffmpeg_memory_mb,
                )
        except AudioDecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if request.rescale and not query:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "rescale applies to queries, not to indexing"
            )
        if request.neural_rescale and not query:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "neural_rescale applies to queries, not to indexing",
            )
        if request.omit_landmarks and not query:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "omit_landmarks applies to queries, not to indexing",
            )
        # The parts run side by side: each is numpy or ONNX Runtime work in a
        # thread, which releases the GIL, so a clip's landmarks and its
        # embedding cost the longer of the two, not their sum.
        landmarks, rescaled, neural, neural_rescaled = await asyncio.gather(
            _none() if request.omit_landmarks else fingerprint(samples, query=query),
            rescaled_fingerprints(samples) if request.rescale else _none(),
            neural_fingerprint(samples, query=query) if request.neural else _none(),
            rescaled_neural_fingerprints(samples) if request.neural_rescale else _none(),
        )
        response = fingerprint_pb2.ExtractFingerprintResponse()
        if landmarks is not None:
            response.landmarks.CopyFrom(landmarks)
        if rescaled is not None:
            response.rescaled.extend(rescaled)
        if neural is not None:
            response.neural.CopyFrom(neural)
        if neural_rescaled is not None:
            response.neural_rescaled.extend(neural_rescaled)
        if request.return_decoded:
            response.decoded.CopyFrom(to_decoded(samples))
        return response


async def _none() -> None:
    """A part that was not asked for."""
    return None


class SubmissionFingerprinter:
    """Consumer of earmark.submission.received (new uploads) and of
    earmark.reindex.requested (indexed tracks again): fingerprints the stored source."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def handle(self, event: events_pb2.SubmissionReceived, delivery: bus.Delivery) -> None:
        extracted = await self._extract(event, delivery)
        await bus.publish(
            self._ctx.js, bus.FINGERPRINT_EXTRACTED, extracted, f"extracted:{event.submission_id}"
        )

    async def handle_reindex(
        self, event: events_pb2.SubmissionReceived, delivery: bus.Delivery
    ) -> None:
        """Same work; the result gets a message id of its own (see earmark_runtime.reindex)."""
        extracted = await self._extract(event, delivery)
        extracted.reindex = True
        sequence = delivery.msg.metadata.sequence.stream if delivery.msg.metadata.sequence else 0
        await bus.publish(
            self._ctx.js,
            bus.FINGERPRINT_EXTRACTED,
            extracted,
            reindex.extracted_id(event.submission_id, sequence),
        )

    async def _extract(
        self, event: events_pb2.SubmissionReceived, delivery: bus.Delivery
    ) -> events_pb2.FingerprintExtracted:
        try:
            data = await self._ctx.blob_store().get(event.blob_key)
        except BlobNotFoundError as exc:
            raise bus.PermanentError(f"source blob {event.blob_key} is missing") from exc
        try:
            samples = await samples_of(
                common_pb2.AudioInput(encoded=data),
                ffmpeg=self._ctx.settings.ffmpeg,
                max_seconds=self._ctx.settings.max_duration_s,
                memory_mb=self._ctx.settings.ffmpeg_memory_mb,
            )
        except AudioDecodeError as exc:
            raise bus.PermanentError(f"cannot decode source: {exc}") from exc
        await delivery.still_working()
        landmarks = await fingerprint(samples, query=False)
        await delivery.still_working()
        neural = await neural_fingerprint(samples, query=False)
        return events_pb2.FingerprintExtracted(submission=event, landmarks=landmarks, neural=neural)

    async def give_up(self, event: events_pb2.SubmissionReceived, error: str) -> None:
        await bus.publish_rejection(
            self._ctx.js,
            event.submission_id,
            "fingerprint",
            common_pb2.REJECTION_CODE_PROCESSING_FAILED,
            error,
        )


async def run() -> None:
    ctx = await start_context("fingerprint", use_blobs=True)
    worker = SubmissionFingerprinter(ctx)
    ctx.consumers.append(
        bus.Consumer(
            ctx.js,
            role="fingerprint",
            subject=bus.SUBMISSION_RECEIVED,
            message_type=events_pb2.SubmissionReceived,
            handler=worker.handle,
            on_give_up=worker.give_up,
            concurrency=ctx.settings.workers,
        )
    )
    # One track at a time: a reindex of the whole catalog leaves the CPU to
    # identify and to new uploads. No give-up hook: an indexed track that cannot
    # be fingerprinted again keeps its old landmarks (the request is dead-lettered).
    ctx.consumers.append(
        bus.Consumer(
            ctx.js,
            role="fingerprint",
            subject=reindex.REINDEX_REQUESTED,
            message_type=events_pb2.SubmissionReceived,
            handler=worker.handle_reindex,
            concurrency=1,
        )
    )
    servicer = FingerprintServicer(ctx)
    started = time.perf_counter()
    await warm_up()
    log.info("model loaded and warmed up in %.2f s", time.perf_counter() - started)
    await run_server(
        bind=ctx.settings.grpc_bind,
        full_service_names=[SERVICE_NAME],
        register=lambda server: fingerprint_pb2_grpc.add_FingerprintServiceServicer_to_server(
            servicer, server
        ),
        health_checks=ctx.health_checks(),
        keys=ctx.keys,
        tls=ctx.tls,
        background=ctx.background_jobs(),
        on_shutdown=ctx.close,
        max_inflight=ctx.settings.max_inflight,
    )
