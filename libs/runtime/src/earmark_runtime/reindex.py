"""The reindex protocol between ingest and fingerprint (`earmark reindex`).

Ingest's Reindex RPC publishes one `SubmissionReceived` per indexed track on
REINDEX_REQUESTED; fingerprint's reindex consumer fingerprints the kept source
again and publishes `FingerprintExtracted` as for a new upload, and search
replaces the track's landmarks in one transaction.

Message ids: JetStream drops a message whose Nats-Msg-Id it saw within its
duplicate window (bus.DUPLICATE_WINDOW_S), so a re-fingerprint must not reuse
the id of the track's first extraction (`extracted:<submission>`), or a reindex
soon after an upload would vanish. Each Reindex call is a generation with ids of
its own; a redelivery of the same request keeps its id, so the stream still
drops the duplicate that a crash between publish and ack can cause.
"""

from __future__ import annotations

from typing import Final

# One subject of its own, so the features worker (which reads submission.received)
# does not describe every track again, and new uploads are not queued behind a
# reindex of the whole catalog.
REINDEX_REQUESTED: Final = "earmark.reindex.requested"


def request_id(generation: str, submission_id: str) -> str:
    """Nats-Msg-Id of a reindex request."""
    return f"reindex:{generation}:{submission_id}"


def extracted_id(submission_id: str, request_sequence: int) -> str:
    """Nats-Msg-Id of the fingerprint extracted for the reindex request stored at
    `request_sequence` in the stream (the same for every redelivery of it)."""
    return f"extracted:{submission_id}:reindex:{request_sequence}"
