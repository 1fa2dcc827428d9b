"""The catalog store: tracks and their landmark index in PostgreSQL.

Writes go through binary COPY built with numpy (no per-row Python work) into
`recent_postings`; `compact` later packs them into one row per hash (or per
2**bits neighbouring hashes in a small catalog), its entries a `bytea` of
8-byte big-endian integers (schema.py). Lookups read both
parts in one prepared statement, with the clip's hashes bound as one binary
array and each row's entries returned as those bytes, parsed with numpy, so a
clip's postings cost one round trip and no per-posting Python work whatever
their number.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import psycopg
from psycopg import AsyncConnection
from psycopg.adapt import Dumper
from psycopg.postgres import types as pg_types
from psycopg.pq import Format
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from earmark.v1 import common_pb2, events_pb2

from .schema import POSTINGS_VIEW, SCHEMA
from .verification import pack_peaks

# Advisory lock key held while a track is checked for duplicates and written.
_INDEXING_LOCK = 0x4541524D41524B  # "EARMARK"
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"
# One binary COPY row of three int4 columns: field count, then (length, value) per field.
_ROW3 = np.dtype(
    [
        ("n", ">i2"),
        ("l1", ">i4"),
        ("hash", ">i4"),
        ("l2", ">i4"),
        ("track", ">i4"),
        ("l3", ">i4"),
        ("t", ">i4"),
    ]
)


def encode_postings(hashes: np.ndarray, track_key: int, times: np.ndarray) -> bytes:
    rows = np.empty(len(hashes), dtype=_ROW3)
    rows["n"] = 3
    rows["l1"] = rows["l2"] = rows["l3"] = 4
    rows["hash"] = hashes.astype("<u4").view("<i4")
    rows["track"] = track_key
    rows["t"] = times.astype("<i4")
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


# One packed entry: track_key in the high 32 bits, then the low `bits` of the
# hash (a row holds 2**bits neighbouring hashes, schema.py) in one byte, then
# the landmark's frame in 24 bits; stored as 8 big-endian bytes (int8send()), a
# row's entries end to end.
_ENTRY_TRACK_SHIFT = 32
_ENTRY_LOW_SHIFT = 24
_ENTRY_LOW_MASK = 0xFF
_ENTRY_TIME_MASK = 0xFFFFFF
_ENTRY_BYTES = 8
# 2**24 frames of 32 ms: 149 hours in one track.
MAX_LANDMARK_TIME: Final = _ENTRY_TIME_MASK
# The packed rows' layout follows the catalog's size (Catalog.compact): a row
# holds the postings of 2**bits neighbouring hashes, bits chosen so that rows
# hold tens of postings (at 4 h of audio one hash has ~4: a row's header and
# B-tree entry, ~69 bytes, cost more than its postings), down to one hash per
# row from FULL_WIDTH_POSTINGS on (~210 h), where one hash has that many
# already. A lookup reads the whole row of each query hash, so this bounds
# what it reads per hash about as the catalog's size does at full width.
MAX_BUCKET_BITS: Final = 5
FULL_WIDTH_POSTINGS: Final = 1 << 27
# A catalog packed hash by hash is re-bucketed only below this size (~52 h):
# above it the rewrite costs more than the rows it saves.
REBUCKET_MAX_POSTINGS: Final = 1 << 25

Postings = tuple[np.ndarray, np.ndarray, np.ndarray]


def bucket_bits_for(postings: int) -> int:
    """How many low hash bits a packed row should span for a catalog of `postings`."""
    if postings <= 0:
        return MAX_BUCKET_BITS
    return int(min(max(math.floor(math.log2(FULL_WIDTH_POSTINGS / postings)), 0), MAX_BUCKET_BITS))


def pack_entries(
    track_keys: np.ndarray, times: np.ndarray, low_bits: np.ndarray | None = None
) -> np.ndarray:
    """Entries as stored; `low_bits`: each hash's bits below its row's key (none: 0)."""
    entries = (track_keys.astype(np.int64) << _ENTRY_TRACK_SHIFT) | (
        times.astype(np.int64) & _ENTRY_TIME_MASK
    )
    if low_bits is not None:
        entries |= (low_bits.astype(np.int64) & _ENTRY_LOW_MASK) << _ENTRY_LOW_SHIFT
    return entries


class HashArray:
    """A clip's distinct hashes, bound to a statement as one binary int4[].

    psycopg would dump a list of Python ints element by element and the
    server parse a text literal of thousands of numbers; this is two numpy
    calls on the way out and a copy on the way in.
    """

    __slots__ = ("values",)

    def __init__(self, values: np.ndarray) -> None:
        self.values = values


_INT4_OID = pg_types["int4"].oid


class _HashArrayDumper(Dumper):
    format = Format.BINARY
    oid = pg_types["int4"].array_oid

    def dump(self, obj: HashArray) -> bytes:
        n = obj.values.size
        if n == 0:
            return struct.pack(">iii", 0, 0, _INT4_OID)
        body = np.empty(n, dtype=[("length", ">i4"), ("value", ">i4")])
        body["length"] = 4
        body["value"] = obj.values.astype("<u4").view("<i4")
        return struct.pack(">iiiii", 1, 0, _INT4_OID, n, 1) + body.tobytes()


# Global, so that every connection of every pool binds HashArray the same way.
psycopg.adapters.register_dumper(HashArray, _HashArrayDumper)


def entry_bytes(entries: np.ndarray) -> bytes:
    """Packed entries (`pack_entries`) as stored in `packed_postings.entries`."""
    return entries.astype(">i8").tobytes()


def _no_postings() -> Postings:
    empty = np.empty(0, dtype=np.int64)
    return np.empty(0, dtype="<u4"), empty, empty


def decode_entry_rows(
    rows: Sequence[tuple[int, int, bytes | memoryview | None]],
    wanted: np.ndarray | None = None,
) -> tuple[Postings, int]:
    """Postings from (row key, layout bits, entries) rows; also how many rows were NULL.

    A NULL is a row left out by a postings budget. Entries are 8-byte
    big-endian integers end to end (`entry_bytes`); a posting's hash is its
    row's key shifted up by `bits` plus the entry's low bits. The Python loop
    only collects each row's bytes; the entries of every row are then read at
    once. With `wanted` (sorted, distinct hashes), only their postings are
    kept: a row spanning several hashes brings its neighbours' along, about
    nine in ten of what a lookup reads at 5 bits, so they are dropped by
    their low bits before anything else is computed from them.
    """
    keys: list[int] = []
    row_bits: list[int] = []
    blobs: list[bytes | memoryview] = []
    skipped = 0
    for key, bits, blob in rows:
        if blob is None:
            skipped += 1
        elif len(blob):
            keys.append(key)
            row_bits.append(bits)
            blobs.append(blob)
    if not blobs:
        return _no_postings(), skipped
    lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
    if np.any(lengths % _ENTRY_BYTES):
        raise ValueError("packed entries are not a whole number of 8-byte entries")
    joined = b"".join(blobs)
    counts = lengths // _ENTRY_BYTES
    row_keys = np.asarray(keys, dtype=np.int64)
    bits_of_row = np.asarray(row_bits, dtype=np.int64)
    # Byte 4 of a big-endian entry is its hash's low bits (bits 24-31).
    low = np.frombuffer(joined, dtype=np.uint8)[_ENTRY_BYTES - 4 :: _ENTRY_BYTES]
    if wanted is None or not bits_of_row.any():
        # At one hash per row the rows read are the wanted hashes' own.
        entries = np.frombuffer(joined, dtype=">i8").astype(np.int64)
        hashes = np.repeat(row_keys << bits_of_row, counts) | low
    else:
        entries, hashes = _wanted_entries(joined, row_keys, bits_of_row, counts, low, wanted)
    postings = (
        hashes.astype("<i4").view("<u4"),
        entries >> _ENTRY_TRACK_SHIFT,
        entries & _ENTRY_TIME_MASK,
    )
    return postings, skipped


def _wanted_entries(
    joined: bytes,
    row_keys: np.ndarray,
    bits_of_row: np.ndarray,
    counts: np.ndarray,
    low: np.ndarray,
    wanted: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(entries, whole hashes) of the rows' postings whose hash is in `wanted`."""
    row_starts = row_keys << bits_of_row
    masks = _wanted_low_bits(row_keys, bits_of_row, wanted)
    if masks is None:
        entries = np.frombuffer(joined, dtype=">i8").astype(np.int64)
        hashes = np.repeat(row_starts, counts) | low
        keep = np.flatnonzero(_members(hashes, wanted))
        return entries[keep], hashes[keep]
    # Only the kept entries (one in ten at 5 bits) are converted at all.
    keep = np.flatnonzero((np.repeat(masks, counts) >> low) & 1)
    entries = np.frombuffer(joined, dtype=">i8")[keep].astype(np.int64)
    row_of = np.searchsorted(np.cumsum(counts), keep, side="right")
    return entries, row_starts[row_of] | low[keep]


# A row's wanted low bits fit one uint32 mask up to 5 bits (MAX_BUCKET_BITS).
_MASK_MAX_BITS = 5


def _wanted_low_bits(
    row_keys: np.ndarray, bits_of_row: np.ndarray, wanted: np.ndarray
) -> np.ndarray | None:
    """Per row, a mask with bit `low` set for each wanted hash `key << bits | low`
    (None when a row spans too many hashes for one mask)."""
    masks = np.zeros(row_keys.size, dtype=np.uint32)
    if wanted.size == 0:
        return masks
    whole = np.asarray(wanted, dtype=np.int64)
    for bits in np.unique(bits_of_row).tolist():
        if bits > _MASK_MAX_BITS:
            return None
        wanted_keys, first = np.unique(whole >> bits, return_index=True)
        bit = np.left_shift(np.uint32(1), (whole & ((1 << bits) - 1)).astype(np.uint32))
        key_masks = np.bitwise_or.reduceat(bit, first)
        rows = bits_of_row == bits
        at = np.minimum(np.searchsorted(wanted_keys, row_keys[rows]), wanted_keys.size - 1)
        masks[rows] = np.where(wanted_keys[at] == row_keys[rows], key_masks[at], np.uint32(0))
    return masks


def _members(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Which of `values` are in `wanted` (sorted, distinct)."""
    if wanted.size == 0:
        return np.zeros(values.size, dtype=bool)
    at = np.minimum(np.searchsorted(wanted, values), wanted.size - 1)
    return np.asarray(wanted[at] == values)


@dataclass(frozen=True)
class TrackRow:
    track_key: int
    track_id: str
    external_id: str
    title: str
    artist: str
    album: str
    isrc: str
    extra: dict[str, str]
    duration_s: float
    source_sha256: str
    source_format: str
    landmark_count: int
    indexed_at_epoch: float
    renditions: list[dict[str, Any]]

    def to_proto(self) -> common_pb2.Track:
        track = common_pb2.Track(
            track_id=self.track_id,
            external_id=self.external_id,
            metadata=common_pb2.TrackMetadata(
                title=self.title,
                artist=self.artist,
                album=self.album,
                isrc=self.isrc,
                extra=self.extra,
            ),
            duration_s=self.duration_s,
            source_sha256=self.source_sha256,
            source_format=self.source_format,
            landmark_count=self.landmark_count,
            renditions=[common_pb2.Rendition(**r) for r in self.renditions],
        )
        track.indexed_at.FromNanoseconds(int(self.indexed_at_epoch * 1e9))
        return track


# Selected from catalog.tracks (schema.SCHEMA), with the track's renditions as JSON.
_TRACK_COLUMNS = (
    "track_key, track_id::text AS track_id, external_id, title, artist, album, isrc, extra, "
    "duration_s, source_sha256, source_format, landmark_count, "
    "extract(epoch FROM indexed_at)::float8 AS indexed_at_epoch, "
    "(SELECT coalesce(jsonb_agg(jsonb_build_object('name', r.name, 'format', r.format, "
    "'bitrate_kbps', r.bitrate_kbps, 'size_bytes', r.size_bytes, 'duration_s', r.duration_s) "
    "ORDER BY r.name), '[]') FROM catalog.renditions r WHERE r.track_key = tracks.track_key) "
    "AS renditions"
)


# Lookups read both parts of the index in one statement, so they see one
# snapshot: a compaction moving postings between them is seen before or
# after, never halfway. Entries travel as the packed rows store them (8-byte
# big-endian integers end to end; the recent rows are packed alike on the
# way), which numpy parses at once, and the statements are prepared once per
# connection.
#
# Both parts come back as (row key, bits, entries) in the packed rows' layout,
# whose bits the marker row of packed_postings holds (schema.py); the query's
# hashes select their rows by key, `hash >> bits`.
# A table without its marker row (emptied by TRUNCATE, say) holds one hash per row.
_LAYOUT_BITS = f"coalesce((SELECT n FROM {SCHEMA}.packed_postings WHERE hash = -1), 0)"  # noqa: S608
_RECENT_ROWS = f"""
    WITH layout AS MATERIALIZED (SELECT {_LAYOUT_BITS} AS bits),
    wanted AS MATERIALIZED (
        SELECT array_agg(DISTINCT h >> (SELECT bits FROM layout)) AS keys
        FROM unnest(%(hashes)s::integer[]) AS h
    )
    SELECT r.hash >> l.bits, l.bits, string_agg(int8send((r.track_key::bigint << 32)
        | ((r.hash & ((1 << l.bits) - 1))::bigint << 24) | r.t::bigint), ''::bytea)
    FROM {SCHEMA}.recent_postings r, layout l WHERE r.hash = ANY(%(hashes)s)
    GROUP BY 1, 2
"""  # noqa: S608
_PACKED_ROWS = f"""
    {_RECENT_ROWS}
    UNION ALL
    SELECT p.hash, l.bits, p.entries FROM {SCHEMA}.packed_postings p, layout l
    WHERE p.hash = ANY((SELECT keys FROM wanted)::integer[])
"""  # noqa: S608
# The rarest hashes first, while their postings fit the budget. One index probe
# per hash: each row is read once and its entries ride along to the ranking (a
# long row's entries are TOASTed, and only their pointer travels: they are
# fetched only for a kept row). A hash left out comes back with NULL entries,
# so the caller knows that there is more.
#
# A row spanning 2**bits hashes holds about that many hashes' postings, of
# which the query wants about one's: the budget grows alike.
_RAREST_PACKED_ROWS = f"""
    {_RECENT_ROWS}
    UNION ALL
    SELECT hash, bits, CASE WHEN running <= (%(budget)s::bigint << bits) THEN entries END
    FROM (
        SELECT p.hash, l.bits, p.entries, sum(p.n) OVER (ORDER BY p.n, p.hash) AS running
        FROM {SCHEMA}.packed_postings p, layout l
        WHERE p.hash = ANY((SELECT keys FROM wanted)::integer[])
    ) ranked
"""  # noqa: S608
# Moves one hash range of recent_postings into packed_postings, appending to
# existing rows; returns how many postings moved. Only for one hash per row
# (bits 0): the entries carry no low bits.
_COMPACT_SLICE = f"""
WITH moved AS (
    DELETE FROM {SCHEMA}.recent_postings WHERE hash >= %s AND hash < %s
    RETURNING hash, track_key, t
), packed AS (
    INSERT INTO {SCHEMA}.packed_postings AS p (hash, n, entries)
    SELECT hash, count(*), string_agg(int8send((track_key::bigint << 32) | t::bigint), ''::bytea)
    FROM moved GROUP BY hash
    ON CONFLICT (hash) DO UPDATE SET n = p.n + EXCLUDED.n, entries = p.entries || EXCLUDED.entries
)
SELECT count(*) FROM moved
"""  # noqa: S608 - SCHEMA is a module constant, values are parameters

# The whole index, both parts, packed afresh into a new table in the layout of
# `bits`: every packed entry is decoded with the current layout (its
# hash = key << old | low byte) and re-keyed, and the recent postings join in.
# The table is filled first and keyed after (a B-tree built from sorted input
# is dense); the caller swaps it in.
_REBUILT = f"{SCHEMA}.packed_postings_next"
_REBUILD = (
    f"""
CREATE TABLE {_REBUILT} (
    hash    integer NOT NULL,
    n       integer NOT NULL,
    entries bytea NOT NULL
) WITH (fillfactor = 100)
""",
    f"INSERT INTO {_REBUILT} (hash, n, entries) VALUES (-1, %(new)s::integer, ''::bytea)",  # noqa: S608
    f"""
INSERT INTO {_REBUILT} (hash, n, entries)
SELECT whole >> %(new)s::integer, count(*), string_agg(
    set_byte(entry, 4, (whole & ((1 << %(new)s::integer) - 1))::integer), ''::bytea ORDER BY entry)
FROM (
    SELECT (p.hash << %(old)s::integer) | get_byte(p.entries, o + 4) AS whole,
        substring(p.entries FROM o + 1 FOR 8) AS entry
    FROM {SCHEMA}.packed_postings p, generate_series(0, length(p.entries) - 8, 8) AS o
    WHERE p.hash >= 0
    UNION ALL
    SELECT hash, int8send((track_key::bigint << 32) | t::bigint) FROM {SCHEMA}.recent_postings
) decoded
GROUP BY 1
""",  # noqa: S608 - SCHEMA is a module constant, values are parameters
    f"ALTER TABLE {_REBUILT} ADD PRIMARY KEY (hash) INCLUDE (n)",
)
# The recent postings are deleted, not truncated: TRUNCATE's exclusive lock
# would wait for a lookup that holds recent_postings while it waits for the
# swapped table, a deadlock. DELETE waits for no reader; compact() truncates
# the emptied table afterwards, in a transaction that holds nothing a lookup needs.
_SWAP_IN_REBUILT = f"""
DROP VIEW {SCHEMA}.postings;
DROP TABLE {SCHEMA}.packed_postings;
ALTER TABLE {_REBUILT} RENAME TO packed_postings;
ALTER INDEX {_REBUILT}_pkey RENAME TO packed_postings_pkey;
{POSTINGS_VIEW}
DELETE FROM {SCHEMA}.recent_postings;
"""  # noqa: S608 - SCHEMA and _REBUILT are module constants


async def _layout_bits(conn: AsyncConnection) -> int:
    cur = await conn.execute(f"SELECT {_LAYOUT_BITS}")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


def _landmark_arrays(
    lm: common_pb2.LandmarkFingerprint,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hashes, times, sorted peak keys) of an event's fingerprint, checked."""
    hashes = np.frombuffer(lm.hashes, dtype="<u4")
    times = np.frombuffer(lm.times, dtype="<u4")
    if hashes.shape != times.shape:
        raise ValueError("landmark hashes and times differ in length")
    if hashes.size and int(hashes.max()) >= 1 << 31:
        # The sign bit of the integer key: the layout marker's (-1) and unused by
        # any extractor (ALGORITHM_VERSION 1 uses 23 bits).
        raise ValueError(f"landmark hash {int(hashes.max()):#x} is beyond 31 bits")
    if times.size and int(times.max()) > MAX_LANDMARK_TIME:
        raise ValueError(
            f"landmark time {int(times.max())} is beyond the index's {MAX_LANDMARK_TIME} frames"
        )
    peaks = pack_peaks(
        np.frombuffer(lm.peak_times, dtype="<u4"), np.frombuffer(lm.peak_bins, dtype="<u4")
    )
    return hashes, times, peaks


async def _release_recent_if_empty(conn: AsyncConnection) -> None:
    """Give back an emptied recent_postings' heap and B-tree (VACUUM keeps their pages).

    A transaction of its own, after the move has committed: it holds only the
    writers' lock, which lookups never wait for, so a lookup that holds
    recent_postings and waits for nothing of ours just delays the TRUNCATE's
    brief exclusive lock.
    """
    async with conn.transaction():
        await _lock_postings(conn)  # no writer can add a row meanwhile
        cur = await conn.execute(f"SELECT EXISTS (SELECT 1 FROM {SCHEMA}.recent_postings)")  # noqa: S608
        left = await cur.fetchone()
        if left is not None and not left[0]:
            await conn.execute(f"TRUNCATE {SCHEMA}.recent_postings")


async def _lock_postings(conn: AsyncConnection) -> None:
    """Serialise the writers of the index (track writes, deletes, compaction slices).

    SHARE ROW EXCLUSIVE conflicts with itself but not with readers, so lookups
    never wait. Every writer takes it first, before touching either part,
    so two writers cannot deadlock on each other's rows.
    """
    await conn.execute(f"LOCK TABLE {SCHEMA}.packed_postings IN SHARE ROW EXCLUSIVE MODE")


def _row_to_track(row: dict[str, Any]) -> TrackRow:
    extra = row["extra"]
    if isinstance(extra, str):
        extra = json.loads(extra)
    renditions = row["renditions"]
    if isinstance(renditions, str):
        renditions = json.loads(renditions)
    return TrackRow(**{**row, "extra": dict(extra or {}), "renditions": list(renditions or [])})


class Catalog:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def exclusive_indexing(self, *, enabled: bool = True) -> AsyncIterator[None]:
        """Serialise duplicate check + write across every search replica."""
        if not enabled:
            yield
            return
        async with self._pool.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock(%s)", (_INDEXING_LOCK,))
            try:
                yield
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_INDEXING_LOCK,))

    async def index_track(self, event: events_pb2.FingerprintExtracted) -> int:
        """Insert or replace the track of a submission with its landmarks, atomically.

        Idempotent: a redelivered event replaces the track's landmarks with the
        same ones, so no posting is ever doubled.
        """
        sub = event.submission
        lm = event.landmarks
        hashes, times, peaks = _landmark_arrays(lm)
        meta = sub.metadata
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                f"""
                INSERT INTO {SCHEMA}.tracks (track_id, external_id, title, artist, album, isrc,
                    extra, duration_s, source_sha256, source_format, blob_key, landmark_count,
                    algorithm_version, frame_rate_hz)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (track_id) DO UPDATE SET
                    external_id = EXCLUDED.external_id, title = EXCLUDED.title,
                    artist = EXCLUDED.artist, album = EXCLUDED.album, isrc = EXCLUDED.isrc,
                    extra = EXCLUDED.extra, duration_s = EXCLUDED.duration_s,
                    source_sha256 = EXCLUDED.source_sha256,
                    source_format = EXCLUDED.source_format, blob_key = EXCLUDED.blob_key,
                    landmark_count = EXCLUDED.landmark_count,
                    algorithm_version = EXCLUDED.algorithm_version,
                    frame_rate_hz = EXCLUDED.frame_rate_hz, indexed_at = now()
                RETURNING track_key
                """,  # noqa: S608 - SCHEMA is a module constant, values are parameters
                (
                    sub.submission_id,
                    sub.external_id,
                    meta.title,
                    meta.artist,
                    meta.album,
                    meta.isrc,
                    json.dumps(dict(meta.extra)),
                    lm.duration_s or sub.duration_s,
                    sub.source_sha256,
                    sub.source_format,
                    sub.blob_key,
                    len(hashes),
                    lm.algorithm_version,
                    lm.frame_rate_hz,
                ),
            )
            row = await cur.fetchone()
            assert row is not None
            track_key = int(row[0])
            await self._replace_landmarks(conn, track_key, hashes, times, peaks)
        return track_key

    async def reindex_track(self, event: events_pb2.FingerprintExtracted) -> bool:
        """Replace the landmarks of a track that is in the catalog; False if it is not.

        For a re-fingerprint (`earmark reindex`): unlike index_track it never
        creates the track, so a track deleted while its reindex request was in
        flight stays deleted. One transaction: identify reads the old postings
        until it commits (PostgreSQL snapshots), the new ones after.
        """
        lm = event.landmarks
        hashes, times, peaks = _landmark_arrays(lm)
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                f"""
                UPDATE {SCHEMA}.tracks SET landmark_count = %s, algorithm_version = %s,
                    frame_rate_hz = %s, indexed_at = now()
                WHERE track_id = %s RETURNING track_key
                """,  # noqa: S608
                (
                    len(hashes),
                    lm.algorithm_version,
                    lm.frame_rate_hz,
                    event.submission.submission_id,
                ),
            )
            row = await cur.fetchone()
            if row is None:
                return False
            await self._replace_landmarks(conn, int(row[0]), hashes, times, peaks)
        return True

    async def _replace_landmarks(
        self,
        conn: AsyncConnection,
        track_key: int,
        hashes: np.ndarray,
        times: np.ndarray,
        peaks: np.ndarray,
    ) -> None:
        """The track's postings and fingerprint row become exactly `hashes`/`times`/`peaks`."""
        await _lock_postings(conn)
        await self._drop_landmarks(conn, track_key)
        await conn.execute(
            f"INSERT INTO {SCHEMA}.fingerprints (track_key, hashes, peaks) VALUES (%s, %s, %s)",  # noqa: S608
            (track_key, np.unique(hashes.view("<i4")).tolist(), peaks.astype("<u4").tobytes()),
        )
        if len(hashes):
            async with conn.cursor().copy(
                f"COPY {SCHEMA}.recent_postings (hash, track_key, t) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                await copy.write(encode_postings(hashes, track_key, times))

    async def _drop_landmarks(self, conn: AsyncConnection, track_key: int) -> None:
        """Remove the track's postings from both parts of the index (caller holds the lock)."""
        # Reach the rows through the track's own hash list, so no index on
        # track_key is needed.
        track_hashes = (
            f"(SELECT unnest(hashes) AS hash FROM {SCHEMA}.fingerprints "  # noqa: S608
            "WHERE track_key = %(key)s) f"
        )
        params = {"key": track_key}
        await conn.execute(
            f"DELETE FROM {SCHEMA}.recent_postings l USING {track_hashes} "  # noqa: S608
            "WHERE l.hash = f.hash AND l.track_key = %(key)s",
            params,
        )
        # The packed rows holding them: one per distinct key, `hash >> bits`.
        track_hashes = (
            f"(SELECT DISTINCT h >> {_LAYOUT_BITS} AS hash "  # noqa: S608
            f"FROM {SCHEMA}.fingerprints, unnest(hashes) AS h WHERE track_key = %(key)s) f"
        )
        # Keep the 8-byte entries whose first 4 bytes (the track key, big-endian)
        # are not this track's.
        await conn.execute(
            f"UPDATE {SCHEMA}.packed_postings p SET (entries, n) = ("  # noqa: S608
            "SELECT coalesce(string_agg(substring(p.entries FROM o + 1 FOR 8), ''::bytea "
            "ORDER BY o), ''::bytea), count(*) "
            "FROM generate_series(0, length(p.entries) - 8, 8) AS o "
            "WHERE substring(p.entries FROM o + 1 FOR 4) <> int4send(%(key)s::integer)) "
            f"FROM {track_hashes} WHERE p.hash = f.hash",
            params,
        )
        await conn.execute(
            f"DELETE FROM {SCHEMA}.packed_postings p USING {track_hashes} "  # noqa: S608
            "WHERE p.hash = f.hash AND p.n = 0",
            params,
        )
        await conn.execute(f"DELETE FROM {SCHEMA}.fingerprints WHERE track_key = %s", (track_key,))  # noqa: S608

    async def track_peaks(self, track_key: int) -> np.ndarray:
        """The track's sorted peak keys (verification.py); empty if none are stored."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT peaks FROM {SCHEMA}.fingerprints WHERE track_key = %s",  # noqa: S608
                (track_key,),
            )
            row = await cur.fetchone()
        return np.frombuffer(row[0], dtype="<u4") if row else np.zeros(0, np.uint32)

    async def postings(self, hashes: np.ndarray) -> Postings:
        """Every (hash, track_key, t) whose hash is among `hashes`, in one round trip."""
        postings, _ = await self._lookup(_PACKED_ROWS, np.unique(hashes.astype("<u4")), None)
        return postings

    async def rarest_postings(
        self, hashes: np.ndarray, max_postings: int, *, parts: int = 1
    ) -> tuple[Postings, int]:
        """Like `postings`, but of the packed rows only the rarest hashes whose
        postings fit in `max_postings`; also how many hashes were left out.

        The most common hashes say the least about which track it is, and cost
        the most to read and vote on. The recent part, small by design, is
        always read whole.

        `parts` > 1 splits the distinct hashes into that many hash ranges read
        at once on as many connections (PostgreSQL runs them on separate
        cores), each with its share of the budget by distinct hashes (so a
        range of common hashes may run out before the whole would): for the
        rescue's lookup of thousands of hashes, whose budget rarely binds. A
        hash's postings are still read by one statement, so a compaction
        moving them is seen before or after, never halfway.
        """
        unique = np.unique(hashes.astype("<u4"))
        if parts <= 1 or unique.size < 2 * parts:
            return await self._lookup(_RAREST_PACKED_ROWS, unique, max_postings)
        ranges = np.array_split(unique, parts)
        found = await asyncio.gather(
            *(
                self._lookup(_RAREST_PACKED_ROWS, r, max_postings * r.size // unique.size)
                for r in ranges
            )
        )
        postings = tuple(np.concatenate([f[0][i] for f in found]) for i in range(3))
        return (postings[0], postings[1], postings[2]), sum(f[1] for f in found)

    async def _lookup(
        self, statement: str, unique: np.ndarray, budget: int | None
    ) -> tuple[Postings, int]:
        """One lookup statement over `unique`: distinct hashes as uint32."""
        if unique.size == 0:
            return _no_postings(), 0
        params: dict[str, Any] = {"hashes": HashArray(unique)}
        if budget is not None:
            params["budget"] = budget
        async with self._pool.connection() as conn:
            cur = await conn.execute(statement, params, prepare=True, binary=True)
            rows = await cur.fetchall()
        return decode_entry_rows(rows, unique.astype(np.int64))

    async def backlog(self) -> tuple[int, int]:
        """(postings waiting in recent_postings, postings of the whole catalog)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT (SELECT count(*) FROM {SCHEMA}.recent_postings), "  # noqa: S608
                f"(SELECT coalesce(sum(landmark_count), 0) FROM {SCHEMA}.tracks)"
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    async def layout_bits(self) -> int:
        """How many low hash bits a packed row spans now (0: one hash per row)."""
        async with self._pool.connection() as conn:
            return await _layout_bits(conn)

    async def compact(self, slices: int = 16, *, bits: int | None = None) -> int:
        """Move every recent posting into the packed rows; the number moved.

        A catalog whose rows span several hashes, or one small enough to
        (`bucket_bits_for`), is packed afresh into a new table in the layout
        its size calls for (`bits` asks for one): each new posting would touch
        most rows anyway, and a fresh table has no dead row versions. A larger
        one, one hash per row, is packed in place in hash-range slices, one
        transaction each: a slice's hashes move atomically (lookups see them
        in one part or the other), locks are held briefly, and a crash loses
        nothing (the slice rolls back and its postings are still in
        recent_postings).
        """
        async with self._pool.connection() as conn:
            if not conn.autocommit:
                # Each slice must commit on its own, and VACUUM cannot run in a transaction.
                raise RuntimeError("Catalog.compact needs an autocommit pool (db.open_pool)")
            current = await _layout_bits(conn)
            if bits is None:
                cur = await conn.execute(
                    f"SELECT coalesce(sum(landmark_count), 0) FROM {SCHEMA}.tracks"  # noqa: S608
                )
                row = await cur.fetchone()
                total = int(row[0]) if row else 0
                wanted = bucket_bits_for(total)
                rebucket = current > 0 or total <= REBUCKET_MAX_POSTINGS
                bits = wanted if rebucket else 0
            if bits == current == 0:
                moved = await self._compact_in_place(conn, slices)
            else:
                moved = await self._rebuild(conn, bits)
            await _release_recent_if_empty(conn)
            # Make the moved rows and the packed rows' old versions reusable now, so
            # the next appends fill them instead of growing the files.
            await conn.execute(f"VACUUM (ANALYZE) {SCHEMA}.recent_postings")
            await conn.execute(f"VACUUM (ANALYZE) {SCHEMA}.packed_postings")
        return moved

    async def _rebuild(self, conn: AsyncConnection, bits: int) -> int:
        """Pack the whole index into a new table of `bits`, swapped in at once.

        One transaction under the writers' lock: writers wait (seconds at the
        sizes this runs at), lookups read the old table until the swap's
        brief exclusive lock, then the new one, its layout with it.
        """
        if not 0 <= bits <= MAX_BUCKET_BITS:
            raise ValueError(f"bits must be within 0..{MAX_BUCKET_BITS}, not {bits}")
        async with conn.transaction():
            await _lock_postings(conn)
            old = await _layout_bits(conn)
            cur = await conn.execute(f"SELECT count(*) FROM {SCHEMA}.recent_postings")  # noqa: S608
            row = await cur.fetchone()
            moved = int(row[0]) if row else 0
            await conn.execute(f"DROP TABLE IF EXISTS {_REBUILT}")
            for statement in _REBUILD:
                await conn.execute(statement, {"old": old, "new": bits})
            await conn.execute(_SWAP_IN_REBUILT)
        return moved

    async def _compact_in_place(self, conn: AsyncConnection, slices: int) -> int:
        moved = 0
        cur = await conn.execute(
            f"SELECT min(hash), max(hash) FROM {SCHEMA}.recent_postings"  # noqa: S608
        )
        row = await cur.fetchone()
        if row is None or row[0] is None:
            return 0
        edges = np.linspace(int(row[0]), int(row[1]) + 1, slices + 1)
        bounds = np.unique(edges.astype(np.int64))
        for low, high in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            async with conn.transaction():
                await _lock_postings(conn)
                if await _layout_bits(conn) != 0:
                    # Another replica re-bucketed meanwhile: its layout is not
                    # this slice's; the next compaction packs what is left.
                    return moved
                cur = await conn.execute(_COMPACT_SLICE, (low, high))
                counted = await cur.fetchone()
                moved += int(counted[0]) if counted else 0
        return moved

    async def tracks_by_key(self, keys: list[int]) -> dict[int, TrackRow]:
        if not keys:
            return {}
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_TRACK_COLUMNS} FROM {SCHEMA}.tracks WHERE track_key = ANY(%s)",  # noqa: S608
                (keys,),
            )
            rows = await cur.fetchall()
        return {int(r["track_key"]): _row_to_track(r) for r in rows}

    async def get_track(self, track_id: str) -> TrackRow | None:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_TRACK_COLUMNS} FROM {SCHEMA}.tracks WHERE track_id = %s",  # noqa: S608
                (track_id,),
            )
            row = await cur.fetchone()
        return _row_to_track(row) if row else None

    async def list_tracks(self, after_key: int, limit: int) -> tuple[list[TrackRow], int]:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_TRACK_COLUMNS} FROM {SCHEMA}.tracks WHERE track_key > %s "  # noqa: S608
                "ORDER BY track_key LIMIT %s",
                (after_key, limit),
            )
            rows = await cur.fetchall()
            total_cur = await conn.execute(f"SELECT count(*) FROM {SCHEMA}.tracks")  # noqa: S608
            total_row = await total_cur.fetchone()
        return [_row_to_track(r) for r in rows], int(total_row[0]) if total_row else 0

    async def record_renditions(self, event: events_pb2.RenditionsReady) -> bool:
        """Replace the track's rendition list; False if the track is gone."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                f"SELECT track_key FROM {SCHEMA}.tracks WHERE track_id = %s FOR UPDATE",  # noqa: S608
                (event.track_id,),
            )
            row = await cur.fetchone()
            if row is None:
                return False
            await conn.execute(f"DELETE FROM {SCHEMA}.renditions WHERE track_key = %s", (row[0],))  # noqa: S608
            async with conn.cursor() as cur2:
                await cur2.executemany(
                    f"INSERT INTO {SCHEMA}.renditions (track_key, name, format, bitrate_kbps, "  # noqa: S608
                    "size_bytes, duration_s) VALUES (%s, %s, %s, %s, %s, %s)",
                    [
                        (row[0], r.name, r.format, r.bitrate_kbps, r.size_bytes, r.duration_s)
                        for r in event.renditions
                    ],
                )
        return True

    async def delete_track(self, track_id: str) -> bool:
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                f"SELECT track_key FROM {SCHEMA}.tracks WHERE track_id = %s FOR UPDATE",  # noqa: S608
                (track_id,),
            )
            row = await cur.fetchone()
            if row is None:
                return False
            await _lock_postings(conn)
            await self._drop_landmarks(conn, int(row[0]))
            await conn.execute(f"DELETE FROM {SCHEMA}.tracks WHERE track_key = %s", (row[0],))  # noqa: S608
        return True
