"""Taking one file in: validate, store, record, announce.

Shared by the Upload RPC and by bulk ingestion from NATS events, so both
apply the same checks and give the same guarantees.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid

from earmark.v1 import common_pb2
from earmark_runtime import bus
from earmark_runtime.audio import AudioDecodeError, decode_audio
from earmark_runtime.service import ServiceContext

from .submissions import NewSubmission, Submissions
from .tags import merge, read_tags
from .validation import Refusal, check_audio, check_content, check_tags

log = logging.getLogger(__name__)
# Validation decodes at a low rate: enough to measure duration and level, and fast.
VALIDATION_RATE_HZ = 8000


class RefusedError(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


async def validate(
    ctx: ServiceContext, data: bytes, metadata: common_pb2.TrackMetadata
) -> tuple[common_pb2.TrackMetadata, float, str]:
    """Checks before anything is stored; returns (merged metadata, duration, container)."""
    settings = ctx.settings
    if not data:
        raise RefusedError(
            Refusal(common_pb2.REJECTION_CODE_NOT_AUDIO, "empty upload: no bytes received")
        )
    if len(data) > settings.max_upload_bytes:
        raise RefusedError(
            Refusal(
                common_pb2.REJECTION_CODE_TOO_LARGE,
                f"upload is larger than the {settings.max_upload_bytes} byte limit",
            )
        )
    try:
        decoded = await decode_audio(
            data,
            sample_rate_hz=VALIDATION_RATE_HZ,
            ffmpeg=settings.ffmpeg,
            max_seconds=settings.max_duration_s,
            memory_mb=settings.ffmpeg_memory_mb,
        )
    except AudioDecodeError as exc:
        raise RefusedError(Refusal(common_pb2.REJECTION_CODE_NOT_AUDIO, str(exc))) from exc
    tags = merge(read_tags(data), metadata)
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
        raise RefusedError(refusal)
    merged = common_pb2.TrackMetadata(
        title=tags.title, artist=tags.artist, album=tags.album, isrc=tags.isrc, extra=tags.extra
    )
    return merged, decoded.duration_s, decoded.container


async def accept(
    ctx: ServiceContext,
    submissions: Submissions,
    *,
    data: bytes,
    external_id: str,
    filename: str,
    metadata: common_pb2.TrackMetadata,
) -> common_pb2.Submission:
    """Validate and store one file; raises RefusedError with the reason if it is refused."""
    merged, duration_s, container = await validate(ctx, data, metadata)
    sha = hashlib.sha256(data).hexdigest()
    new = NewSubmission(
        submission_id=str(uuid.uuid4()),
        external_id=external_id,
        filename=filename,
        metadata=merged,
        duration_s=duration_s,
        size_bytes=len(data),
        source_sha256=sha,
        source_format=container,
        blob_key=f"sources/{sha}",
    )
    # Blob first: a row never points at a missing blob. Same bytes, same key. A
    # failure here surfaces as UNAVAILABLE (see earmark_runtime.interceptors).
    await ctx.blob_store().put(new.blob_key, data)
    submission, created = await submissions.create(new)
    if not created:
        return submission
    try:
        await bus.publish(
            ctx.js, bus.SUBMISSION_RECEIVED, new.received_event(), f"received:{new.submission_id}"
        )
        await submissions.mark_published(new.submission_id)
    except Exception:
        # The row is committed; the outbox sweeper publishes it shortly.
        log.warning("publish of %s deferred to the outbox", new.submission_id, exc_info=True)
    return submission
