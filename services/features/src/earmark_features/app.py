"""The features service: describes every submission and serves the descriptors."""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc
from psycopg.rows import dict_row

from earmark.v1 import events_pb2, features_pb2, features_pb2_grpc
from earmark_runtime import bus
from earmark_runtime.audio import AudioDecodeError, decode_audio
from earmark_runtime.blobs import BlobNotFoundError
from earmark_runtime.server import run_server
from earmark_runtime.service import ServiceContext, start_context

from .descriptors import SAMPLE_RATE_HZ, describe

log = logging.getLogger(__name__)
SERVICE_NAME = features_pb2.DESCRIPTOR.services_by_name["FeaturesService"].full_name
SCHEMA = "features"
MIGRATIONS = (
    """
    CREATE TABLE track_features (
        track_id uuid PRIMARY KEY,
        extractor_version text NOT NULL,
        features bytea NOT NULL,
        computed_at timestamptz NOT NULL DEFAULT now()
    );
    """,
)


class FeaturesServicer(features_pb2_grpc.FeaturesServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def GetFeatures(
        self, request: features_pb2.GetFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.GetFeaturesResponse:
        try:
            uuid.UUID(request.track_id)
        except ValueError:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"track_id {request.track_id!r} is not a UUID"
            )
        async with self._ctx.db().connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT features FROM features.track_features WHERE track_id = %s",
                (request.track_id,),
            )
            row = await cur.fetchone()
        if row is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no features for track {request.track_id}"
            )
        assert row is not None
        return features_pb2.GetFeaturesResponse(
            features=features_pb2.TrackFeatures.FromString(bytes(row["features"]))
        )


class Describer:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def handle(self, event: events_pb2.SubmissionReceived, _d: bus.Delivery) -> None:
        try:
            data = await self._ctx.blob_store().get(event.blob_key)
            decoded = await decode_audio(
                data, sample_rate_hz=SAMPLE_RATE_HZ, ffmpeg=self._ctx.settings.ffmpeg
            )
        except (BlobNotFoundError, AudioDecodeError) as exc:
            # Fingerprinting rejects such a submission; there is nothing to describe.
            raise bus.PermanentError(str(exc)) from exc
        features = await asyncio.to_thread(describe, decoded.samples, event.submission_id)
        async with self._ctx.db().connection() as conn:
            await conn.execute(
                """
                INSERT INTO features.track_features (track_id, extractor_version, features)
                VALUES (%s, %s, %s)
                ON CONFLICT (track_id) DO UPDATE SET extractor_version = EXCLUDED.extractor_version,
                    features = EXCLUDED.features, computed_at = now()
                """,
                (event.submission_id, features.extractor_version, features.SerializeToString()),
            )
        computed = events_pb2.FeaturesComputed(submission_id=event.submission_id, features=features)
        await bus.publish(
            self._ctx.js, bus.FEATURES_COMPUTED, computed, f"features:{event.submission_id}"
        )

    async def on_deleted(self, event: events_pb2.TrackDeleted, _d: bus.Delivery) -> None:
        async with self._ctx.db().connection() as conn:
            await conn.execute(
                "DELETE FROM features.track_features WHERE track_id = %s", (event.track_id,)
            )


async def run() -> None:
    ctx = await start_context("features", migrations=[(SCHEMA, MIGRATIONS)], use_blobs=True)
    describer = Describer(ctx)
    ctx.consumers += [
        bus.Consumer(
            ctx.js,
            role="features",
            subject=bus.SUBMISSION_RECEIVED,
            message_type=events_pb2.SubmissionReceived,
            handler=describer.handle,
            concurrency=ctx.settings.workers,
        ),
        bus.Consumer(
            ctx.js,
            role="features",
            subject=bus.TRACK_DELETED,
            message_type=events_pb2.TrackDeleted,
            handler=describer.on_deleted,
        ),
    ]
    servicer = FeaturesServicer(ctx)
    await run_server(
        bind=ctx.settings.grpc_bind,
        full_service_names=[SERVICE_NAME],
        register=lambda server: features_pb2_grpc.add_FeaturesServiceServicer_to_server(
            servicer, server
        ),
        health_checks=ctx.health_checks(),
        background=ctx.background_jobs(),
        on_shutdown=ctx.close,
    )
