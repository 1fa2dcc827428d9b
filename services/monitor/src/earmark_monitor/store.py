"""Registered streams, their watchers' leases, and the play log, in PostgreSQL."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from .playlog import CONTINUATION_GAP_S, LoggedPlay, PlayRecord, continues
from .schema import SCHEMA


class StreamExistsError(ValueError):
    """The name is registered with another URL."""


class Lease(enum.Enum):
    HELD = "held"  # renewed: keep watching
    REMOVED = "removed"  # the stream was removed (or registered anew): stop, ack
    LOST = "lost"  # another replica holds it now: stop, leave the message alone


@dataclass(frozen=True)
class StreamRow:
    name: str
    url: str
    generation: int
    registered_at: dt.datetime
    holder: str | None
    lease_until: dt.datetime | None
    message_seq: int | None
    claims: int
    heard_at: dt.datetime | None
    last_error: str
    source_ended_at: dt.datetime | None

    def watched_by(self, now: dt.datetime) -> str:
        held = self.holder and self.lease_until is not None and self.lease_until > now
        return self.holder or "" if held else ""


_STREAM_COLUMNS = (
    "name, url, generation, registered_at, holder, lease_until, message_seq, claims, "
    "heard_at, last_error, source_ended_at"
)


class StreamStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def register(self, name: str, url: str) -> tuple[StreamRow, bool]:
        """(the stream, whether it is new). Raises StreamExistsError for another URL."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"INSERT INTO {SCHEMA}.streams (name, url) VALUES (%s, %s) "  # noqa: S608
                "ON CONFLICT (name) DO NOTHING RETURNING name",
                (name, url),
            )
            created = await cur.fetchone() is not None
        row = await self.get(name)
        assert row is not None
        if row.url != url:
            raise StreamExistsError(
                f"stream {name!r} is registered with another URL ({row.url}); remove it first"
            )
        return row, created

    async def get(self, name: str) -> StreamRow | None:
        rows = await self._select("WHERE name = %s", (name,))
        return rows[0] if rows else None

    async def all(self) -> list[StreamRow]:
        return await self._select("ORDER BY name", ())

    async def remove(self, name: str) -> bool:
        async with self._pool.connection() as conn:
            cur = await conn.execute(f"DELETE FROM {SCHEMA}.streams WHERE name = %s", (name,))  # noqa: S608
            return cur.rowcount > 0

    async def _select(self, clause: str, params: tuple[Any, ...]) -> list[StreamRow]:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"SELECT {_STREAM_COLUMNS} FROM {SCHEMA}.streams {clause}", params)  # noqa: S608
            return [StreamRow(**r) for r in await cur.fetchall()]

    async def claim(
        self, name: str, generation: int, holder: str, message_seq: int, lease_s: float
    ) -> bool:
        """Take the stream's lease if nobody holds a live one (or it is ours already)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"""
                UPDATE {SCHEMA}.streams
                SET holder = %(holder)s, lease_until = now() + %(lease)s * interval '1 second',
                    message_seq = %(seq)s, claims = claims + 1
                WHERE name = %(name)s AND generation = %(generation)s
                  AND source_ended_at IS NULL
                  AND (holder IS NULL OR lease_until < now() OR holder = %(holder)s)
                """,  # noqa: S608
                {
                    "holder": holder,
                    "lease": lease_s,
                    "seq": message_seq,
                    "name": name,
                    "generation": generation,
                },
            )
            return cur.rowcount == 1

    async def renew(self, name: str, generation: int, holder: str, lease_s: float) -> Lease:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"""
                UPDATE {SCHEMA}.streams
                SET lease_until = now() + %s * interval '1 second'
                WHERE name = %s AND generation = %s AND holder = %s
                """,  # noqa: S608
                (lease_s, name, generation, holder),
            )
            if cur.rowcount == 1:
                return Lease.HELD
        row = await self.get(name)
        if row is None or row.generation != generation:
            return Lease.REMOVED
        return Lease.LOST

    async def release(self, name: str, generation: int, holder: str) -> None:
        """Give the lease back (shutting down), so another replica may claim at once."""
        async with self._pool.connection() as conn:
            await conn.execute(
                f"UPDATE {SCHEMA}.streams SET holder = NULL, lease_until = NULL "  # noqa: S608
                "WHERE name = %s AND generation = %s AND holder = %s",
                (name, generation, holder),
            )

    async def note(
        self,
        name: str,
        holder: str,
        *,
        heard: bool = False,
        error: str | None = None,
        source_ended: bool = False,
    ) -> None:
        """Record that audio arrived, why the source failed, or that a file ended."""
        async with self._pool.connection() as conn:
            await conn.execute(
                f"""
                UPDATE {SCHEMA}.streams
                SET heard_at = CASE WHEN %(heard)s THEN now() ELSE heard_at END,
                    last_error = CASE WHEN %(heard)s THEN '' ELSE coalesce(%(error)s, last_error)
                                 END,
                    source_ended_at = CASE WHEN %(ended)s THEN now() ELSE source_ended_at END
                WHERE name = %(name)s AND holder = %(holder)s
                """,  # noqa: S608
                {
                    "heard": heard,
                    "error": error,
                    "ended": source_ended,
                    "name": name,
                    "holder": holder,
                },
            )

    async def unwatched(self, grace_s: float) -> list[StreamRow]:
        """Streams nobody has held for `grace_s` (a work message lost, or never sent)."""
        return await self._select(
            "WHERE source_ended_at IS NULL AND (lease_until IS NULL "
            "OR lease_until < now() - %s * interval '1 second') ORDER BY name",
            (grace_s,),
        )


class PlayLog:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def start(
        self, stream: str, generation: int, holder: str, record: PlayRecord
    ) -> str | None:
        """Log a play, or extend the one it continues; its id. None: we lost the stream."""
        async with self._pool.connection() as conn, conn.transaction():
            if not await _holds(conn, stream, generation, holder):
                return None
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"""
                SELECT play_id::text AS play_id, track_id::text AS track_id, track_zero, ended_at
                FROM {SCHEMA}.plays
                WHERE stream_name = %s AND track_id = %s
                  AND ended_at >= %s - %s * interval '1 second'
                ORDER BY ended_at DESC
                FOR UPDATE
                """,  # noqa: S608
                (stream, record.track_id, record.started_at, CONTINUATION_GAP_S),
            )
            for row in await cur.fetchall():
                logged = LoggedPlay(**row)
                if continues(logged, record):
                    await conn.execute(
                        f"""
                        UPDATE {SCHEMA}.plays
                        SET ended_at = greatest(ended_at, %s),
                            confidence = greatest(confidence, %s), playing = true
                        WHERE play_id = %s
                        """,  # noqa: S608
                        (record.ended_at, record.confidence, logged.play_id),
                    )
                    return logged.play_id
            play_id = str(uuid.uuid4())
            await conn.execute(
                f"""
                INSERT INTO {SCHEMA}.plays (play_id, stream_name, track_id, external_id, title,
                    artist, duration_s, started_at, ended_at, track_zero, track_offset_s,
                    confidence, playing)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, true)
                """,  # noqa: S608
                (
                    play_id,
                    stream,
                    record.track_id,
                    record.external_id,
                    record.title,
                    record.artist,
                    record.duration_s,
                    record.started_at,
                    record.ended_at,
                    record.track_zero,
                    record.track_offset_s,
                    record.confidence,
                ),
            )
            return play_id

    async def update(
        self, stream: str, generation: int, holder: str, play_id: str, record: PlayRecord
    ) -> bool:
        """A PLAYING or ENDED event of a logged play; False: we lost the stream."""
        async with self._pool.connection() as conn, conn.transaction():
            if not await _holds(conn, stream, generation, holder):
                return False
            # The monitor may have settled on a better alignment since STARTED (music
            # that repeats a bar): the latest one places the track, and the offset
            # follows from it at the play's own start.
            await conn.execute(
                f"""
                UPDATE {SCHEMA}.plays
                SET ended_at = greatest(ended_at, %(ended)s),
                    confidence = greatest(confidence, %(confidence)s), playing = %(playing)s,
                    track_zero = %(zero)s,
                    track_offset_s = extract(epoch FROM started_at - %(zero)s)
                WHERE play_id = %(play_id)s
                """,  # noqa: S608
                {
                    "ended": record.ended_at,
                    "confidence": record.confidence,
                    "playing": record.playing,
                    "zero": record.track_zero,
                    "play_id": play_id,
                },
            )
            return True

    async def between(
        self,
        stream: str,
        since: dt.datetime | None,
        until: dt.datetime | None,
        after: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Plays overlapping [since, until), in (started_at, play_id) order after `after`."""
        clauses = ["stream_name = %s"]
        params: list[Any] = [stream]
        if since is not None:
            clauses.append("ended_at >= %s")
            params.append(since)
        if until is not None:
            clauses.append("started_at < %s")
            params.append(until)
        if after is not None:
            clauses.append("(started_at, play_id) > (%s, %s::uuid)")
            params += [after[0], after[1]]
        params.append(limit)
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"""
                SELECT play_id::text AS play_id, stream_name, track_id::text AS track_id,
                    external_id, title, artist, duration_s, started_at, ended_at,
                    track_offset_s, confidence, playing
                FROM {SCHEMA}.plays WHERE {" AND ".join(clauses)}
                ORDER BY started_at, play_id LIMIT %s
                """,  # noqa: S608
                params,
            )
            return list(await cur.fetchall())


async def _holds(conn: AsyncConnection, stream: str, generation: int, holder: str) -> bool:
    """Lock the stream's row if `holder` still holds it: the fence on every play write."""
    cur = await conn.execute(
        f"SELECT 1 FROM {SCHEMA}.streams WHERE name = %s AND generation = %s "  # noqa: S608
        "AND holder = %s FOR UPDATE",
        (stream, generation, holder),
    )
    return await cur.fetchone() is not None
