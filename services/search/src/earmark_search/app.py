"""The search service: the catalog's gRPC API and the indexing consumer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc
import numpy as np

from earmark.v1 import (
    common_pb2,
    events_pb2,
    fingerprint_pb2,
    fingerprint_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)
from earmark_runtime import bus, milvus
from earmark_runtime.ids import is_uuid, require_uuid
from earmark_runtime.server import run_server
from earmark_runtime.service import ServiceContext, dial, start_context
from earmark_runtime.streams import StreamTooLargeError, collect_header_and_chunks
from earmark_runtime.telemetry import client_interceptors

from .catalog import Catalog, Postings
from .compaction import CompactionPolicy, Compactor, IdleFlush
from .duplicates import find_duplicate
from .identify import NeuralQuery, ScaledQuery, identify, postings_budget, scan_recording
from .live import monitor_events
from .live_landmarks import SAMPLE_RATE_HZ
from .schema import MIGRATIONS, SCHEMA
from .vector_matching import QueryView
from .vectors import SegmentStore
from .warm_up import warm_up

log = logging.getLogger(__name__)
SERVICE_NAME = search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name
MAX_PAGE_SIZE = 1000
# A two-hour show as 320 kbps MP3 is ~290 MB; beyond that, scan it in parts.
MAX_SCAN_BYTES = 512 * 1024 * 1024
# A monitored stream is analysed like a query clip: its frame grid is not the catalog's.
MONITOR_EXTRACTION = fingerprint_pb2.EXTRACTION_PURPOSE_QUERY


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(
        self,
        ctx: ServiceContext,
        catalog: Catalog,
        fingerprinter: fingerprint_pb2_grpc.FingerprintServiceStub,
        segments: SegmentStore | None = None,
    ) -> None:
        self._ctx = ctx
        self._catalog = catalog
        self._fingerprinter = fingerprinter
        self._segments = segments

    async def Identify(
        self, request: search_pb2.IdentifyRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.IdentifyResponse:
        audio = request.audio
        size = (
            len(audio.encoded)
            if audio.WhichOneof("source") == "encoded"
            else len(audio.pcm.samples)
        )
        if size == 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "no audio given: the clip is empty"
            )
        started = time.perf_counter()
        # The neural segments come with the landmarks (embedding a clip costs a few
        # ms); the rescaled landmarks only on demand, in a second call.
        neural = self._segments is not None and (
            request.method != search_pb2.IDENTIFY_METHOD_LANDMARKS
        )
        # fingerprint stops decoding at the clip limit and refuses longer clips.
        # It hands the decoded clip back: the follow-up requests (the rescue,
        # the pitch views) send that instead of the upload, and skip a decode.
        extracted = await self._fingerprint(
            audio, context, self._ctx.settings.max_clip_s, neural=neural, return_decoded=True
        )
        extracted_at = time.perf_counter()
        decoded = extracted.decoded if extracted.HasField("decoded") else None
        try:
            response = await identify(
                self._catalog,
                extracted.landmarks,
                max(1, request.max_matches),
                neural=self._neural_query(extracted.neural) if neural else None,
                rescaled=lambda: self._rescaled(audio, decoded, context),
                neural_rescaled=lambda: self._neural_rescaled(audio, decoded, context),
                vector_search=self._segments.search if self._segments else None,
                vector_has_track=self._segments.has_track if self._segments else None,
                method=request.method,
            )
            response.timings.extract_ms = (extracted_at - started) * 1000
            response.timings.total_ms = (time.perf_counter() - started) * 1000
            return response
        except OSError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"catalog unavailable: {exc}")
        raise AssertionError("unreachable")

    async def _rescaled(
        self,
        audio: common_pb2.AudioInput,
        decoded: fingerprint_pb2.DecodedClip | None,
        context: grpc.aio.ServicerContext,
    ) -> list[ScaledQuery]:
        """The clip's landmarks at the fingerprinter's frequency scales (a second
        request: only clips that matched nothing as they are pay for it)."""
        extracted = await self._fingerprint(
            audio,
            context,
            self._ctx.settings.max_clip_s,
            decoded=decoded,
            rescale=True,
            omit_landmarks=True,
        )
        return [
            ScaledQuery(
                frequency_scale=v.frequency_scale,
                hashes=np.frombuffer(v.landmarks.hashes, dtype="<u4"),
                times=np.frombuffer(v.landmarks.times, dtype="<u4"),
                peak_times=np.frombuffer(v.landmarks.peak_times, dtype="<u4"),
                peak_bins=np.frombuffer(v.landmarks.peak_bins, dtype="<u4"),
            )
            for v in extracted.rescaled
        ]

    def _neural_query(self, nf: common_pb2.NeuralFingerprint) -> NeuralQuery | None:
        """The clip's vectors, unless another model made them than the one indexed."""
        if self._segments is not None and nf.dim and nf.model != self._segments.model:
            log.warning(
                "neural search skipped: the fingerprint service embeds with %r, the index holds %r",
                nf.model,
                self._segments.model,
            )
            return None
        return neural_query(nf)

    async def _neural_rescaled(
        self,
        audio: common_pb2.AudioInput,
        decoded: fingerprint_pb2.DecodedClip | None,
        context: grpc.aio.ServicerContext,
    ) -> list[QueryView]:
        """The clip's segment vectors at the fingerprinter's pitch views (a second
        request: only clips whose plain vectors matched nothing pay for it)."""
        extracted = await self._fingerprint(
            audio,
            context,
            self._ctx.settings.max_clip_s,
            decoded=decoded,
            neural_rescale=True,
            omit_landmarks=True,
        )
        views = []
        for v in extracted.neural_rescaled:
            query = self._neural_query(v.neural)
            if query is not None:
                views.append(QueryView(v.frequency_scale, query.times_s, query.vectors))
        return views

    async def _extract(
        self,
        audio: common_pb2.AudioInput,
        context: grpc.aio.ServicerContext,
        max_duration_s: float = 0.0,
    ) -> common_pb2.LandmarkFingerprint:
        extracted = await self._fingerprint(audio, context, max_duration_s)
        landmarks: common_pb2.LandmarkFingerprint = extracted.landmarks
        return landmarks

    async def _fingerprint(
        self,
        audio: common_pb2.AudioInput,
        context: grpc.aio.ServicerContext,
        max_duration_s: float,
        *,
        decoded: fingerprint_pb2.DecodedClip | None = None,
        rescale: bool = False,
        neural: bool = False,
        neural_rescale: bool = False,
        omit_landmarks: bool = False,
        return_decoded: bool = False,
    ) -> fingerprint_pb2.ExtractFingerprintResponse:
        """One query extraction by the fingerprint service; its refusals pass through.

        `decoded`: the clip as fingerprint decoded it in an earlier request, sent
        instead of `audio` so that it is not decoded again. A replica older than
        DecodedClip (met during a rollout or a rollback) refuses such a request
        as one without audio; `audio` is sent then.
        """
        request = fingerprint_pb2.ExtractFingerprintRequest(
            purpose=fingerprint_pb2.EXTRACTION_PURPOSE_QUERY,
            max_duration_s=max_duration_s,
            rescale=rescale,
            neural=neural,
            neural_rescale=neural_rescale,
            omit_landmarks=omit_landmarks,
            return_decoded=return_decoded,
        )
        if decoded is not None:
            request.decoded.CopyFrom(decoded)
            try:
                reply: fingerprint_pb2.ExtractFingerprintResponse = (
                    await self._fingerprinter.ExtractFingerprint(request, timeout=300)
                )
                return reply
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    await _abort_for(context, exc)
                log.warning(
                    "fingerprint refused a decoded clip (%s); sending the upload", exc.details()
                )
            request.ClearField("decoded")
        request.audio.CopyFrom(audio)
        try:
            extracted: fingerprint_pb2.ExtractFingerprintResponse = (
                await self._fingerprinter.ExtractFingerprint(request, timeout=300)
            )
        except grpc.aio.AioRpcError as exc:
            await _abort_for(context, exc)
        return extracted

    async def Scan(
        self,
        request_iterator: AsyncIterator[search_pb2.ScanRequest],
        context: grpc.aio.ServicerContext,
    ) -> search_pb2.ScanResponse:
        try:
            header, data = await collect_header_and_chunks(
                request_iterator, context, limit_bytes=MAX_SCAN_BYTES
            )
        except StreamTooLargeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable") from exc
        if not data:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "no audio given: the file is empty"
            )
        window_s = header.window_s or 10.0
        hop_s = header.hop_s or window_s / 2
        if not (2.0 <= window_s <= 60.0 and 0.5 <= hop_s <= window_s):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "window_s must be within 2..60 s and hop_s within 0.5 s..window_s",
            )
        landmarks = await self._extract(common_pb2.AudioInput(encoded=data), context)
        try:
            timeline = await scan_recording(self._catalog, landmarks, window_s, hop_s)
        except OSError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"catalog unavailable: {exc}")
            raise AssertionError("unreachable") from exc
        return timeline

    async def Monitor(
        self,
        request_iterator: AsyncIterator[search_pb2.MonitorRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[search_pb2.MonitorEvent]:
        async for event in monitor_events(
            request_iterator,
            context,
            catalog=self._catalog,
            extract=self._extract_window,
            max_audio_s=self._ctx.settings.max_monitor_s,
            ffmpeg=self._ctx.settings.ffmpeg,
        ):
            yield event

    async def _extract_window(self, pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks of one stretch of a monitored stream (8 kHz mono PCM)."""
        audio = common_pb2.AudioInput(
            pcm=common_pb2.PcmAudio(
                samples=pcm.astype("<i2").tobytes(), sample_rate_hz=SAMPLE_RATE_HZ, channels=1
            )
        )
        try:
            extracted = await self._fingerprinter.ExtractFingerprint(
                fingerprint_pb2.ExtractFingerprintRequest(
                    audio=audio,
                    purpose=MONITOR_EXTRACTION,
                    max_duration_s=pcm.size / SAMPLE_RATE_HZ + 1.0,
                ),
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            raise ConnectionError(f"fingerprint service failed: {exc.code().name}") from exc
        landmarks = extracted.landmarks
        return (
            np.frombuffer(landmarks.hashes, dtype="<u4"),
            np.frombuffer(landmarks.times, dtype="<u4"),
        )

    async def GetTrack(
        self, request: search_pb2.GetTrackRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.GetTrackResponse:
        await require_uuid(context, "track_id", request.track_id)
        track = await self._catalog.get_track(request.track_id)
        if track is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no track {request.track_id}")
        assert track is not None
        return search_pb2.GetTrackResponse(track=track.to_proto())

    async def ListTracks(
        self, request: search_pb2.ListTracksRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.ListTracksResponse:
        size = min(request.page_size or 100, MAX_PAGE_SIZE)
        after = 0
        if request.page_token:
            try:
                after = int(request.page_token)
            except ValueError:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed page_token")
        rows, total = await self._catalog.list_tracks(after, size)
        next_token = str(rows[-1].track_key) if len(rows) == size else ""
        return search_pb2.ListTracksResponse(
            tracks=[r.to_proto() for r in rows], next_page_token=next_token, total_count=total
        )

    async def DeleteTrack(
        self, request: search_pb2.DeleteTrackRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.DeleteTrackResponse:
        await require_uuid(context, "track_id", request.track_id)
        if not await delete_everywhere(self._catalog, self._segments, request.track_id):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no track {request.track_id}")
        await bus.publish(
            self._ctx.js,
            bus.TRACK_DELETED,
            events_pb2.TrackDeleted(track_id=request.track_id),
            f"deleted:{request.track_id}",
        )
        return search_pb2.DeleteTrackResponse()


def neural_query(nf: common_pb2.NeuralFingerprint) -> NeuralQuery | None:
    if not nf.dim:
        return None
    return NeuralQuery(
        times_s=np.frombuffer(nf.times, dtype="<f4").astype(np.float64),
        vectors=np.frombuffer(nf.vectors, dtype="<f4").reshape(-1, nf.dim),
    )


async def delete_everywhere(catalog: Catalog, segments: SegmentStore | None, track_id: str) -> bool:
    """Delete a track from PostgreSQL, then its vectors. A crash in between leaves
    vectors of a track that no longer exists: identify drops answers whose track
    is gone, and re-indexing a key overwrites its rows."""
    track = await catalog.get_track(track_id)
    if not await catalog.delete_track(track_id):
        return False
    if segments is not None and track is not None:
        await asyncio.to_thread(segments.delete_track, track.track_key)
    return True


class Indexer:
    """Consumer of earmark.fingerprint.extracted: writes the landmarks to the catalog
    and the neural segments to Milvus (both idempotent, so a redelivery after a
    crash between the two writes completes the second)."""

    def __init__(
        self,
        ctx: ServiceContext,
        catalog: Catalog,
        segments: SegmentStore | None = None,
        compactor: Compactor | None = None,
        segment_flush: IdleFlush | None = None,
    ) -> None:
        self._ctx = ctx
        self._catalog = catalog
        self._segments = segments
        self._compactor = compactor
        self._segment_flush = segment_flush

    async def handle(self, event: events_pb2.FingerprintExtracted, delivery: bus.Delivery) -> None:
        if not is_uuid(event.submission.submission_id):
            raise bus.PermanentError(f"bad submission id {event.submission.submission_id!r}")
        if event.reindex:
            await self._reindex(event)
            return
        policy = self._ctx.settings.duplicates
        sub = event.submission
        try:
            # One indexer at a time checks and writes, so two copies of one recording
            # arriving together cannot both pass the check.
            async with self._catalog.exclusive_indexing(enabled=policy != "allow"):
                if policy != "allow":
                    duplicate = await self._duplicate_of(event)
                    if duplicate is not None and policy == "reject":
                        await self._reject_duplicate(event, *duplicate)
                        return
                    if duplicate is not None:
                        log.info("%s replaces track %s", sub.submission_id, duplicate[0])
                        await delete_everywhere(self._catalog, self._segments, duplicate[0])
                await self._catalog.index_track(event)
            self._wrote_postings()
            await self._write_segments(event)
        except ValueError as exc:
            raise bus.PermanentError(str(exc)) from exc
        indexed = events_pb2.TrackIndexed(
            submission_id=event.submission.submission_id,
            track_id=event.submission.submission_id,
            landmark_count=len(event.landmarks.hashes) // 4,
            blob_key=event.submission.blob_key,
        )
        await bus.publish(
            self._ctx.js, bus.TRACK_INDEXED, indexed, f"indexed:{event.submission.submission_id}"
        )

    async def _reindex(self, event: events_pb2.FingerprintExtracted) -> None:
        """New fingerprints of a catalog track; a track deleted meanwhile stays deleted."""
        try:
            if not await self._catalog.reindex_track(event):
                log.info("reindex of deleted track %s ignored", event.submission.submission_id)
                return
            self._wrote_postings()
            await self._write_segments(event)
        except ValueError as exc:
            raise bus.PermanentError(str(exc)) from exc

    def _wrote_postings(self) -> None:
        if self._compactor is not None:
            self._compactor.wrote()

    async def _write_segments(self, event: events_pb2.FingerprintExtracted) -> None:
        nf = event.neural
        if self._segments is None or not event.HasField("neural") or not nf.dim:
            return
        track = await self._catalog.get_track(event.submission.submission_id)
        if track is None:
            return
        if nf.model != self._segments.model:
            # Vectors of another model are meaningless in this collection. A rolling
            # upgrade where fingerprint runs ahead of search: retry until both agree.
            raise RuntimeError(
                f"neural vectors of model {nf.model!r}, this search indexes "
                f"{self._segments.model!r}: deploy the same model to fingerprint and search"
            )
        vectors = np.frombuffer(nf.vectors, dtype="<f4").reshape(-1, nf.dim)
        times = np.frombuffer(nf.times, dtype="<f4")
        await asyncio.to_thread(self._segments.write_track, track.track_key, times, vectors)
        if self._segment_flush is not None:
            self._segment_flush.wrote()

    async def _duplicate_of(
        self, event: events_pb2.FingerprintExtracted
    ) -> tuple[str, float] | None:
        lm = event.landmarks
        own = await self._catalog.get_track(event.submission.submission_id)
        found = await find_duplicate(
            np.frombuffer(lm.hashes, dtype="<u4"),
            np.frombuffer(lm.times, dtype="<u4"),
            lm.frame_rate_hz,
            self._rarest_postings,
            ignore_track_key=own.track_key if own else None,
        )
        if found is None:
            return None
        tracks = await self._catalog.tracks_by_key([found.track_key])
        track = tracks.get(found.track_key)
        return (track.track_id, found.coverage) if track else None

    async def _rarest_postings(self, hashes: np.ndarray) -> Postings:
        # A copy of a recording shares its rare hashes too; reading only those
        # keeps the check's cost flat as the catalog grows.
        postings, _ = await self._catalog.rarest_postings(hashes, postings_budget(hashes))
        return postings

    async def _reject_duplicate(
        self, event: events_pb2.FingerprintExtracted, track_id: str, coverage: float
    ) -> None:
        rejected = events_pb2.SubmissionRejected(
            submission_id=event.submission.submission_id,
            stage="search",
            rejection=common_pb2.Rejection(
                code=common_pb2.REJECTION_CODE_DUPLICATE,
                message=f"same recording as track {track_id} ({coverage:.0%} of it matches)",
                duplicate_of_track_id=track_id,
            ),
        )
        await bus.publish(
            self._ctx.js,
            bus.SUBMISSION_REJECTED,
            rejected,
            f"rejected:{event.submission.submission_id}",
        )

    async def on_renditions(self, event: events_pb2.RenditionsReady, _d: bus.Delivery) -> None:
        if not await self._catalog.record_renditions(event):
            log.info("renditions for deleted track %s ignored", event.track_id)

    async def give_up(self, event: events_pb2.FingerprintExtracted, error: str) -> None:
        await bus.publish_rejection(
            self._ctx.js,
            event.submission.submission_id,
            "search",
            common_pb2.REJECTION_CODE_PROCESSING_FAILED,
            error,
        )


async def _abort_for(context: grpc.aio.ServicerContext, exc: grpc.aio.AioRpcError) -> NoReturn:
    """Pass a fingerprint refusal on as it is; anything else means it is unavailable."""
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.details() or "bad audio")
    await context.abort(
        grpc.StatusCode.UNAVAILABLE, f"fingerprint service unavailable: {exc.code().name}"
    )
    raise AssertionError("unreachable") from exc


async def open_segments(uri: str) -> SegmentStore | None:
    """The neural segment index, or None when EARMARK_VECTORS_URI is empty."""
    if not uri:
        log.info("EARMARK_VECTORS_URI is empty: neural identification is off")
        return None
    return await asyncio.to_thread(SegmentStore, milvus.check_uri(uri, "EARMARK_VECTORS_URI"))


async def run() -> None:
    ctx = await start_context("search", migrations=[(SCHEMA, MIGRATIONS)])
    catalog = Catalog(ctx.db())
    channel = dial(ctx, ctx.settings.fingerprint_addr, client_interceptors(ctx.settings.api_key))
    fingerprinter = fingerprint_pb2_grpc.FingerprintServiceStub(channel)
    segments = await open_segments(ctx.settings.vectors_uri)
    settings = ctx.settings
    compactor = Compactor(catalog, CompactionPolicy(settings.compact_rows, settings.compact_idle_s))
    housekeeping = [compactor.run]
    segment_flush = None
    if segments is not None:
        store = segments

        async def flush_segments() -> None:
            await asyncio.to_thread(store.flush)

        segment_flush = IdleFlush(flush_segments, settings.compact_idle_s)
        housekeeping.append(segment_flush.run)
    indexer = Indexer(ctx, catalog, segments, compactor, segment_flush)
    ctx.consumers.append(
        bus.Consumer(
            ctx.js,
            role="search",
            subject=bus.FINGERPRINT_EXTRACTED,
            message_type=events_pb2.FingerprintExtracted,
            handler=indexer.handle,
            on_give_up=indexer.give_up,
            concurrency=ctx.settings.workers,
        )
    )
    ctx.consumers.append(
        bus.Consumer(
            ctx.js,
            role="search",
            subject=bus.RENDITIONS_READY,
            message_type=events_pb2.RenditionsReady,
            handler=indexer.on_renditions,
        )
    )
    servicer = SearchServicer(ctx, catalog, fingerprinter, segments)
    await warm_up(catalog, segments)

    async def shutdown() -> None:
        await ctx.close()
        await channel.close()
        if segments is not None:
            await asyncio.to_thread(segments.close)

    await run_server(
        bind=ctx.settings.grpc_bind,
        full_service_names=[SERVICE_NAME],
        register=lambda server: search_pb2_grpc.add_SearchServiceServicer_to_server(
            servicer, server
        ),
        health_checks=ctx.health_checks(),
        keys=ctx.keys,
        tls=ctx.tls,
        background=[*ctx.background_jobs(), *housekeeping],
        on_shutdown=shutdown,
    )
