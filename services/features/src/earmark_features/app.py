"""The features service: describes every submission, indexes it, answers "more like this".

Descriptors (essentia) go to PostgreSQL (schema `features`); a normalised
similarity vector goes to Milvus (a Milvus Lite file under $EARMARK_HOME by
default, or the server in EARMARK_MILVUS_URI). essentia holds the GIL for
seconds, so extraction runs in a process pool and the event loop stays free
for Similar calls and health probes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid

import grpc
import numpy as np
from psycopg.rows import dict_row

from earmark.v1 import common_pb2, events_pb2, features_pb2, features_pb2_grpc
from earmark_runtime import bus, milvus
from earmark_runtime.audio import AudioDecodeError, decode_audio, pcm16_to_float
from earmark_runtime.blobs import BlobNotFoundError
from earmark_runtime.config import earmark_home
from earmark_runtime.server import run_server
from earmark_runtime.service import ServiceContext, start_context

from . import similarity
from .descriptors import EXTRACTOR_VERSION, MAX_ANALYSED_S, SAMPLE_RATE_HZ
from .index import BadFilter, Hit, SimilarityIndex, TrackNotIndexed, neighbour_of
from .workers import DescribeFailed, Extractor

log = logging.getLogger(__name__)
SERVICE_NAME = features_pb2.DESCRIPTOR.services_by_name["FeaturesService"].full_name
SCHEMA = "features"
DEFAULT_K = 10
MAX_K = 100
MIN_CLIP_S = 3.0
MIGRATIONS = (
    """
    CREATE TABLE track_features (
        track_id uuid PRIMARY KEY,
        extractor_version text NOT NULL,
        features bytea NOT NULL,
        computed_at timestamptz NOT NULL DEFAULT now()
    );
    """,
    # Schema 2 descriptors: the searchable scalars beside the message, and
    # tombstones so a late (redelivered) description never resurrects a track
    # that was deleted or rejected meanwhile.
    """
    ALTER TABLE track_features
        ADD COLUMN schema_version integer NOT NULL DEFAULT 1,
        ADD COLUMN bpm double precision,
        ADD COLUMN musical_key text,
        ADD COLUMN scale text,
        ADD COLUMN integrated_lufs double precision;
    CREATE INDEX track_features_version ON track_features (extractor_version);
    CREATE TABLE gone (
        track_id uuid PRIMARY KEY,
        reason text NOT NULL,
        at timestamptz NOT NULL DEFAULT now()
    );
    """,
)


def milvus_uri() -> str:
    """EARMARK_MILVUS_URI, or a Milvus Lite file under $EARMARK_HOME."""
    uri = os.environ.get("EARMARK_MILVUS_URI", "").strip()
    if not uri:
        return str(earmark_home() / "features" / "milvus.db")
    return milvus.check_uri(uri, "EARMARK_MILVUS_URI")


class Store:
    def __init__(self, ctx: ServiceContext, index: SimilarityIndex) -> None:
        self.ctx = ctx
        self.index = index

    async def is_gone(self, track_id: str) -> bool:
        async with self.ctx.db().connection() as conn:
            cur = await conn.execute("SELECT 1 FROM features.gone WHERE track_id = %s", (track_id,))
            return await cur.fetchone() is not None

    async def save(self, f: features_pb2.TrackFeatures) -> None:
        async with self.ctx.db().connection() as conn:
            await conn.execute(
                """
                INSERT INTO features.track_features (track_id, extractor_version, features,
                    schema_version, bpm, musical_key, scale, integrated_lufs)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (track_id) DO UPDATE SET extractor_version = EXCLUDED.extractor_version,
                    features = EXCLUDED.features, schema_version = EXCLUDED.schema_version,
                    bpm = EXCLUDED.bpm, musical_key = EXCLUDED.musical_key,
                    scale = EXCLUDED.scale, integrated_lufs = EXCLUDED.integrated_lufs,
                    computed_at = now()
                """,
                (
                    f.track_id,
                    f.extractor_version,
                    f.SerializeToString(),
                    f.schema_version,
                    f.rhythm.bpm,
                    f.tonality.key,
                    f.tonality.scale,
                    f.loudness.integrated_lufs,
                ),
            )
        await asyncio.to_thread(self.index.upsert, f.track_id, f)

    async def load(self, track_id: str) -> features_pb2.TrackFeatures | None:
        async with self.ctx.db().connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT features FROM features.track_features WHERE track_id = %s", (track_id,)
            )
            row = await cur.fetchone()
        if row is None:
            return None
        features: features_pb2.TrackFeatures = features_pb2.TrackFeatures.FromString(
            bytes(row["features"])
        )
        return features

    async def forget(self, track_id: str, reason: str) -> None:
        async with self.ctx.db().connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO features.gone (track_id, reason) VALUES (%s, %s) "
                "ON CONFLICT (track_id) DO NOTHING",
                (track_id, reason),
            )
            await conn.execute(
                "DELETE FROM features.track_features WHERE track_id = %s", (track_id,)
            )
        await asyncio.to_thread(self.index.delete, track_id)

    async def backfill(self) -> None:
        """Index rows of the current extractor missing from Milvus (new file, new layout)."""
        last = "00000000-0000-0000-0000-000000000000"
        added = 0
        while True:
            async with self.ctx.db().connection() as conn:
                cur = await conn.execute(
                    "SELECT track_id::text, features FROM features.track_features "
                    "WHERE extractor_version = %s AND track_id > %s ORDER BY track_id LIMIT 500",
                    (EXTRACTOR_VERSION, last),
                )
                rows = await cur.fetchall()
            if not rows:
                break
            last = rows[-1][0]
            present = await asyncio.to_thread(self.index.has, [r[0] for r in rows])
            missing = [
                (r[0], features_pb2.TrackFeatures.FromString(bytes(r[1])))
                for r in rows
                if r[0] not in present
            ]
            if missing:
                await asyncio.to_thread(self.index.upsert_many, missing)
                added += len(missing)
        if added:
            log.info("back-filled %d tracks into the similarity index", added)


def _k(requested: int) -> int:
    return min(requested or DEFAULT_K, MAX_K)


def _results(hits: list[Hit], query: features_pb2.TrackFeatures) -> features_pb2.SimilarResponse:
    return features_pb2.SimilarResponse(
        results=[
            features_pb2.SimilarTrack(
                track_id=h.track_id,
                score=h.score,
                reasons=h.reasons,
                bpm=h.info.bpm,
                key=h.info.key,
                scale=h.info.scale,
                integrated_lufs=h.info.integrated_lufs,
            )
            for h in hits
        ],
        query=query,
        similarity_version=similarity.SIMILARITY_VERSION,
    )


class FeaturesServicer(features_pb2_grpc.FeaturesServiceServicer):
    def __init__(self, store: Store, extractor: Extractor) -> None:
        self._store = store
        self._extractor = extractor

    @staticmethod
    async def _track_id(value: str, context: grpc.aio.ServicerContext) -> str:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"track_id {value!r} is not a UUID"
            )
            raise

    async def GetFeatures(
        self, request: features_pb2.GetFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.GetFeaturesResponse:
        track_id = await self._track_id(request.track_id, context)
        features = await self._store.load(track_id)
        if features is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no features for track {track_id}")
        return features_pb2.GetFeaturesResponse(features=features)

    async def Similar(
        self, request: features_pb2.SimilarRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.SimilarResponse:
        track_id = await self._track_id(request.track_id, context)
        flt = request.filter if request.HasField("filter") else None
        try:
            hits = await asyncio.to_thread(self._store.index.similar, track_id, _k(request.k), flt)
        except TrackNotIndexed:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"track {track_id} is not in the similarity index"
            )
        except BadFilter as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        query = await self._store.load(track_id) or features_pb2.TrackFeatures(track_id=track_id)
        return _results(hits, query)

    async def SimilarToAudio(
        self, request: features_pb2.SimilarToAudioRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.SimilarResponse:
        settings = self._store.ctx.settings
        try:
            samples = await _samples_of(request.audio, settings.ffmpeg, settings.max_clip_s)
        except AudioDecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if samples.size < MIN_CLIP_S * SAMPLE_RATE_HZ:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"clip is shorter than {MIN_CLIP_S:.0f} s"
            )
        flt = request.filter if request.HasField("filter") else None
        try:
            query = await self._extractor.describe(samples, "")
        except DescribeFailed as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{exc}; try again")
        vec = similarity.vector(query)
        try:
            hits = await asyncio.to_thread(
                self._store.index.search,
                vec,
                _k(request.k),
                flt=flt,
                query_info=neighbour_of(query),
            )
        except BadFilter as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return _results(hits, query)


async def _samples_of(audio: common_pb2.AudioInput, ffmpeg: str, max_s: float) -> np.ndarray:
    kind = audio.WhichOneof("source")
    if kind == "encoded":
        decoded = await decode_audio(
            audio.encoded, sample_rate_hz=SAMPLE_RATE_HZ, ffmpeg=ffmpeg, max_seconds=max_s
        )
        samples = decoded.samples
    elif kind == "pcm":
        if not audio.pcm.samples:
            raise AudioDecodeError("empty PCM audio")
        samples = await asyncio.to_thread(
            pcm16_to_float,
            audio.pcm.samples,
            audio.pcm.sample_rate_hz,
            audio.pcm.channels or 1,
            SAMPLE_RATE_HZ,
        )
    else:
        raise AudioDecodeError("no audio given: set audio.encoded or audio.pcm")
    if samples.size > max_s * SAMPLE_RATE_HZ:
        raise AudioDecodeError(f"audio is longer than the {max_s:.0f} s limit")
    return np.asarray(samples, dtype=np.float32)


class Describer:
    def __init__(self, store: Store, extractor: Extractor) -> None:
        self._store = store
        self._extractor = extractor

    async def handle(self, event: events_pb2.SubmissionReceived, _d: bus.Delivery) -> None:
        ctx = self._store.ctx
        if await self._store.is_gone(event.submission_id):
            return
        try:
            data = await ctx.blob_store().get(event.blob_key)
            decoded = await decode_audio(
                data, sample_rate_hz=SAMPLE_RATE_HZ, ffmpeg=ctx.settings.ffmpeg
            )
        except (BlobNotFoundError, AudioDecodeError) as exc:
            # Fingerprinting rejects such a submission; there is nothing to describe.
            raise bus.PermanentError(str(exc)) from exc
        # describe() reads at most the middle MAX_ANALYSED_S; ship only that to the worker.
        samples = decoded.samples
        limit = int(MAX_ANALYSED_S * SAMPLE_RATE_HZ)
        if samples.size > limit:
            start = (samples.size - limit) // 2
            samples = samples[start : start + limit]
        features = await self._extractor.describe(samples, event.submission_id)
        features.duration_s = decoded.duration_s
        # A delete or rejection may have arrived while we were describing.
        if await self._store.is_gone(event.submission_id):
            return
        await self._store.save(features)
        computed = events_pb2.FeaturesComputed(submission_id=event.submission_id, features=features)
        await bus.publish(
            ctx.js, bus.FEATURES_COMPUTED, computed, f"features:{event.submission_id}"
        )

    async def on_deleted(self, event: events_pb2.TrackDeleted, _d: bus.Delivery) -> None:
        await self._store.forget(event.track_id, "deleted")

    async def on_rejected(self, event: events_pb2.SubmissionRejected, _d: bus.Delivery) -> None:
        await self._store.forget(event.submission_id, f"rejected by {event.stage}")


async def run() -> None:
    uri = milvus_uri()
    ctx = await start_context("features", migrations=[(SCHEMA, MIGRATIONS)], use_blobs=True)
    index = await asyncio.to_thread(SimilarityIndex, uri)
    log.info("similarity index %s at %s", similarity.SIMILARITY_VERSION, uri)
    extractor = Extractor(ctx.settings.workers)
    store = Store(ctx, index)
    describer = Describer(store, extractor)
    ctx.consumers += [
        bus.Consumer(
            ctx.js,
            role="features",
            subject=bus.SUBMISSION_RECEIVED,
            message_type=events_pb2.SubmissionReceived,
            handler=describer.handle,
            concurrency=ctx.settings.workers,
            # A long track takes a while to describe; heartbeats keep it ours meanwhile.
            ack_wait_s=120.0,
            # Well past the longest description's own budget (workers.py), decode and
            # writes included: only a step that hangs outright ever reaches it.
            handler_timeout_s=900.0,
        ),
        bus.Consumer(
            ctx.js,
            role="features",
            subject=bus.TRACK_DELETED,
            message_type=events_pb2.TrackDeleted,
            handler=describer.on_deleted,
        ),
        bus.Consumer(
            ctx.js,
            role="features",
            subject=bus.SUBMISSION_REJECTED,
            message_type=events_pb2.SubmissionRejected,
            handler=describer.on_rejected,
        ),
    ]
    index_open = True

    async def milvus_ok() -> bool:
        return index_open and await asyncio.to_thread(index.ping)

    checks = {**ctx.health_checks(), "milvus": milvus_ok}

    async def backfill() -> None:
        try:
            await store.backfill()
        except Exception:
            log.exception("similarity back-fill failed; will retry on the next start")

    async def shutdown() -> None:
        nonlocal index_open
        await ctx.close()
        extractor.close()
        index_open = False
        await asyncio.to_thread(index.close)

    servicer = FeaturesServicer(store, extractor)
    await run_server(
        bind=ctx.settings.grpc_bind,
        full_service_names=[SERVICE_NAME],
        register=lambda server: features_pb2_grpc.add_FeaturesServiceServicer_to_server(
            servicer, server
        ),
        health_checks=checks,
        keys=ctx.keys,
        tls=ctx.tls,
        background=[*ctx.background_jobs(), backfill],
        on_shutdown=shutdown,
    )
