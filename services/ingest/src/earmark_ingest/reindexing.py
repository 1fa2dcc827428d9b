"""`earmark reindex`: fingerprint indexed tracks again after an algorithm change.

No downtime: nothing is deleted up front. Each track's request travels
ingest -> fingerprint (re-extracts from the kept source) -> search, which
replaces the track's landmarks in one transaction (Catalog.index_track), so
identify answers from the old landmarks until the new ones are committed, and
from the new ones after. The duplicate check ignores the track itself.

Which tracks: those whose last fingerprint came from another algorithm version
than the fingerprint service runs now (recorded per submission when the
fingerprint comes back), or all with `force`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Final

from nats.js import JetStreamContext

from earmark.v1 import common_pb2, fingerprint_pb2, fingerprint_pb2_grpc, ingest_pb2
from earmark_runtime import bus, reindex

from .submissions import Submissions

log = logging.getLogger(__name__)
# Rows flagged and published per round trip; publishes of one batch run together.
BATCH: Final = 200
_PROBE_RATE_HZ: Final = 8000


async def current_algorithm_version(
    fingerprinter: fingerprint_pb2_grpc.FingerprintServiceStub,
) -> int:
    """The algorithm version the fingerprint service runs: asked, not assumed, so a
    rolling upgrade is judged by what the fingerprinters will actually produce."""
    silence = common_pb2.PcmAudio(
        samples=b"\0\0" * _PROBE_RATE_HZ, sample_rate_hz=_PROBE_RATE_HZ, channels=1
    )
    reply = await fingerprinter.ExtractFingerprint(
        fingerprint_pb2.ExtractFingerprintRequest(
            audio=common_pb2.AudioInput(pcm=silence),
            purpose=fingerprint_pb2.EXTRACTION_PURPOSE_INDEX,
        ),
        timeout=30,
    )
    return int(reply.landmarks.algorithm_version)


async def request_reindex(
    js: JetStreamContext,
    submissions: Submissions,
    algorithm_version: int,
    *,
    force: bool,
    dry_run: bool,
) -> ingest_pb2.ReindexResponse:
    """Publish a reindex request per selected track; the counts after doing so."""
    indexed, outdated, _pending = await submissions.reindex_counts(algorithm_version)
    response = ingest_pb2.ReindexResponse(
        algorithm_version=algorithm_version, indexed_tracks=indexed, outdated_tracks=outdated
    )
    if not dry_run:
        generation = uuid.uuid4().hex[:12]
        ids = await submissions.to_reindex(algorithm_version, force=force)
        log.info("reindex %s: %d tracks (version %d)", generation, len(ids), algorithm_version)
        for start in range(0, len(ids), BATCH):
            # Flag first, publish next: a fingerprint that comes back at once clears
            # the flag after it was set, never before.
            events = await submissions.mark_reindex_pending(ids[start : start + BATCH])
            await asyncio.gather(
                *(
                    bus.publish(
                        js,
                        reindex.REINDEX_REQUESTED,
                        event,
                        reindex.request_id(generation, event.submission_id),
                    )
                    for event in events
                )
            )
            response.requested += len(events)
        response.generation = generation
    response.pending = (await submissions.reindex_counts(algorithm_version))[2]
    return response
