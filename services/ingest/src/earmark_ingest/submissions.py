"""The submissions store: every upload and the state it reached."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from earmark.v1 import common_pb2, events_pb2

from .schema import SCHEMA

RECEIVED = common_pb2.SUBMISSION_STATE_RECEIVED
FINGERPRINTED = common_pb2.SUBMISSION_STATE_FINGERPRINTED
INDEXED = common_pb2.SUBMISSION_STATE_INDEXED
REJECTED = common_pb2.SUBMISSION_STATE_REJECTED
DELETED = common_pb2.SUBMISSION_STATE_DELETED

_COLUMNS = (
    "submission_id::text AS submission_id, external_id, filename, state, rejection_code, "
    "rejection_message, duplicate_of, coalesce(track_id::text, '') AS track_id, title, artist, "
    "album, isrc, extra, duration_s, source_sha256, source_format, blob_key, "
    "extract(epoch FROM created_at)::float8 AS created, "
    "extract(epoch FROM updated_at)::float8 AS updated, "
    "(SELECT coalesce(jsonb_object_agg(key, extract(epoch FROM value::timestamptz)), '{}') "
    "FROM jsonb_each_text(stages)) AS stage_epochs"
)


@dataclass(frozen=True)
class NewSubmission:
    submission_id: str
    external_id: str
    filename: str
    metadata: common_pb2.TrackMetadata
    duration_s: float
    size_bytes: int
    source_sha256: str
    source_format: str
    blob_key: str

    def received_event(self) -> events_pb2.SubmissionReceived:
        return events_pb2.SubmissionReceived(
            submission_id=self.submission_id,
            external_id=self.external_id,
            blob_key=self.blob_key,
            source_sha256=self.source_sha256,
            source_format=self.source_format,
            metadata=self.metadata,
            duration_s=self.duration_s,
        )


def _metadata(row: dict[str, Any]) -> common_pb2.TrackMetadata:
    extra = row["extra"]
    if isinstance(extra, str):
        extra = json.loads(extra)
    return common_pb2.TrackMetadata(
        title=row["title"],
        artist=row["artist"],
        album=row["album"],
        isrc=row["isrc"],
        extra=dict(extra or {}),
    )


def row_to_proto(row: dict[str, Any]) -> common_pb2.Submission:
    sub = common_pb2.Submission(
        submission_id=row["submission_id"],
        external_id=row["external_id"],
        filename=row["filename"],
        state=row["state"],
        track_id=row["track_id"],
        metadata=_metadata(row),
        duration_s=row["duration_s"],
    )
    if row["state"] == REJECTED:
        sub.rejection.CopyFrom(
            common_pb2.Rejection(
                code=row["rejection_code"],
                message=row["rejection_message"],
                duplicate_of_track_id=row["duplicate_of"],
            )
        )
    sub.created_at.FromNanoseconds(int(row["created"] * 1e9))
    sub.updated_at.FromNanoseconds(int(row["updated"] * 1e9))
    sub.source_sha256 = row["source_sha256"]
    epochs = row.get("stage_epochs") or {}
    if isinstance(epochs, str):
        epochs = json.loads(epochs)
    for stage, epoch in sorted(epochs.items(), key=lambda kv: float(kv[1])):
        entry = sub.stages.add(stage=stage)
        entry.at.FromNanoseconds(int(float(epoch) * 1e9))
    return sub


def row_to_event(row: dict[str, Any]) -> events_pb2.SubmissionReceived:
    return events_pb2.SubmissionReceived(
        submission_id=row["submission_id"],
        external_id=row["external_id"],
        blob_key=row["blob_key"],
        source_sha256=row["source_sha256"],
        source_format=row["source_format"],
        metadata=_metadata(row),
        duration_s=row["duration_s"],
    )


class Submissions:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def create(self, new: NewSubmission) -> tuple[common_pb2.Submission, bool]:
        """Insert, or return the live submission of the same file and external_id.

        The flag says whether a new row was made.
        """
        m = new.metadata
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"""
                INSERT INTO {SCHEMA}.submissions (submission_id, external_id, filename, state,
                    title, artist, album, isrc, extra, duration_s, size_bytes, source_sha256,
                    source_format, blob_key, stages)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                    jsonb_build_object('validated', now()))
                ON CONFLICT (external_id, source_sha256) WHERE state NOT IN (4, 5) DO NOTHING
                RETURNING {_COLUMNS}
                """,  # noqa: S608 - SCHEMA and _COLUMNS are module constants
                (
                    new.submission_id,
                    new.external_id,
                    new.filename,
                    RECEIVED,
                    m.title,
                    m.artist,
                    m.album,
                    m.isrc,
                    json.dumps(dict(m.extra)),
                    new.duration_s,
                    new.size_bytes,
                    new.source_sha256,
                    new.source_format,
                    new.blob_key,
                ),
            )
            row = await cur.fetchone()
            if row is not None:
                return row_to_proto(row), True
            await cur.execute(
                f"SELECT {_COLUMNS} FROM {SCHEMA}.submissions "  # noqa: S608
                "WHERE external_id = %s AND source_sha256 = %s AND state NOT IN (4, 5)",
                (new.external_id, new.source_sha256),
            )
            row = await cur.fetchone()
        if row is None:  # rejected in between; the caller may simply retry
            raise RuntimeError("conflicting submission vanished; retry the upload")
        return row_to_proto(row), False

    async def record_refused(
        self, *, external_id: str, filename: str, code: int, message: str
    ) -> common_pb2.Submission:
        """A REJECTED row for a file nobody waits on (bulk events): the reason must be findable."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"""
                INSERT INTO {SCHEMA}.submissions (submission_id, external_id, filename, state,
                    rejection_code, rejection_message, published)
                VALUES (%s, %s, %s, %s, %s, %s, true)
                RETURNING {_COLUMNS}
                """,  # noqa: S608
                (str(uuid.uuid4()), external_id, filename, REJECTED, code, message),
            )
            row = await cur.fetchone()
        assert row is not None
        return row_to_proto(row)

    async def mark_stage(self, submission_id: str, stage: str, at: datetime | None) -> None:
        """Record when `stage` happened (the event's time; now if unknown), once."""
        async with self._pool.connection() as conn:
            await conn.execute(
                f"UPDATE {SCHEMA}.submissions "  # noqa: S608
                "SET stages = stages || jsonb_build_object(%s::text, coalesce(%s, now())), "
                "updated_at = now() WHERE submission_id = %s AND NOT stages ? %s::text",
                (stage, at, submission_id, stage),
            )

    async def live_by_sha(self, shas: list[str]) -> list[common_pb2.Submission]:
        if not shas:
            return []
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_COLUMNS} FROM {SCHEMA}.submissions "  # noqa: S608
                "WHERE source_sha256 = ANY(%s) AND state NOT IN (4, 5)",
                (shas,),
            )
            rows = await cur.fetchall()
        return [row_to_proto(r) for r in rows]

    async def mark_published(self, submission_id: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                f"UPDATE {SCHEMA}.submissions SET published = true WHERE submission_id = %s",  # noqa: S608
                (submission_id,),
            )

    async def unpublished(
        self, older_than_s: float, limit: int = 100
    ) -> list[events_pb2.SubmissionReceived]:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_COLUMNS} FROM {SCHEMA}.submissions WHERE NOT published "  # noqa: S608
                "AND created_at < now() - make_interval(secs => %s) ORDER BY created_at LIMIT %s",
                (older_than_s, limit),
            )
            rows = await cur.fetchall()
        return [row_to_event(r) for r in rows]

    async def get_many(self, ids: list[str]) -> list[common_pb2.Submission]:
        if not ids:
            return []
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_COLUMNS} FROM {SCHEMA}.submissions "  # noqa: S608
                "WHERE submission_id = ANY(%s::uuid[])",
                (ids,),
            )
            rows = await cur.fetchall()
        by_id = {r["submission_id"]: row_to_proto(r) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    async def advance(self, submission_id: str, state: int, track_id: str = "") -> bool:
        """Move forward only: a late FINGERPRINTED never undoes INDEXED, REJECTED or DELETED."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"""
                UPDATE {SCHEMA}.submissions
                SET state = %s, updated_at = now(),
                    track_id = coalesce(nullif(%s, '')::uuid, track_id)
                WHERE submission_id = %s AND state < %s
                """,  # noqa: S608
                (state, track_id, submission_id, state),
            )
            return cur.rowcount > 0

    async def record_fingerprint(self, submission_id: str, algorithm_version: int) -> None:
        """A fingerprint of the submission was extracted: its version; no reindex pending."""
        async with self._pool.connection() as conn:
            await conn.execute(
                f"UPDATE {SCHEMA}.submissions SET algorithm_version = %s, "  # noqa: S608
                "reindex_pending = false WHERE submission_id = %s",
                (algorithm_version, submission_id),
            )

    async def reindex_counts(self, current_version: int) -> tuple[int, int, int]:
        """(indexed tracks, of which fingerprinted by another version, of which pending)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT count(*), count(*) FILTER (WHERE algorithm_version <> %s), "  # noqa: S608
                f"count(*) FILTER (WHERE reindex_pending) FROM {SCHEMA}.submissions "
                "WHERE state = %s",
                (current_version, INDEXED),
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    async def to_reindex(self, current_version: int, *, force: bool) -> list[str]:
        """Ids of the indexed submissions to fingerprint again, oldest first."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT submission_id::text FROM {SCHEMA}.submissions "  # noqa: S608
                "WHERE state = %s AND (%s OR algorithm_version <> %s) ORDER BY created_at",
                (INDEXED, force, current_version),
            )
            rows = await cur.fetchall()
        return [str(r[0]) for r in rows]

    async def mark_reindex_pending(self, ids: list[str]) -> list[events_pb2.SubmissionReceived]:
        """Flag `ids` as waiting for a new fingerprint; their events, for those still
        indexed (a track deleted meanwhile is left out)."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"UPDATE {SCHEMA}.submissions SET reindex_pending = true "  # noqa: S608
                f"WHERE submission_id = ANY(%s::uuid[]) AND state = %s RETURNING {_COLUMNS}",
                (ids, INDEXED),
            )
            rows = await cur.fetchall()
        return [row_to_event(r) for r in rows]

    async def mark_deleted(self, submission_id: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                f"UPDATE {SCHEMA}.submissions SET state = %s, updated_at = now() "  # noqa: S608
                "WHERE submission_id = %s",
                (DELETED, submission_id),
            )

    async def reject(self, submission_id: str, rejection: common_pb2.Rejection) -> bool:
        """Mark REJECTED (final); never undoes INDEXED or DELETED."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"""
                UPDATE {SCHEMA}.submissions
                SET state = %s, rejection_code = %s, rejection_message = %s, duplicate_of = %s,
                    updated_at = now()
                WHERE submission_id = %s AND state IN (%s, %s)
                """,  # noqa: S608
                (
                    REJECTED,
                    rejection.code,
                    rejection.message,
                    rejection.duplicate_of_track_id,
                    submission_id,
                    RECEIVED,
                    FINGERPRINTED,
                ),
            )
            return cur.rowcount > 0

    async def blob_still_needed(self, blob_key: str, except_id: str) -> bool:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT 1 FROM {SCHEMA}.submissions WHERE blob_key = %s "  # noqa: S608
                "AND submission_id <> %s AND state NOT IN (%s, %s) LIMIT 1",
                (blob_key, except_id, REJECTED, DELETED),
            )
            return await cur.fetchone() is not None

    async def record_renditions(self, submission_id: str, keys: list[str]) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                f"UPDATE {SCHEMA}.submissions SET rendition_keys = %s "  # noqa: S608
                "WHERE submission_id = %s",
                (keys, submission_id),
            )

    async def rendition_keys(self, submission_id: str) -> list[str]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT rendition_keys FROM {SCHEMA}.submissions WHERE submission_id = %s",  # noqa: S608
                (submission_id,),
            )
            row = await cur.fetchone()
        return list(row[0]) if row else []

    async def blob_key_of(self, submission_id: str) -> str:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT blob_key FROM {SCHEMA}.submissions WHERE submission_id = %s",  # noqa: S608
                (submission_id,),
            )
            row = await cur.fetchone()
        return str(row[0]) if row else ""
