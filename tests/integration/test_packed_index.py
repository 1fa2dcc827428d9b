"""The two-part landmark index in the real PostgreSQL: recent rows, packed rows, and
the compaction that moves postings from one to the other without losing any."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from earmark.v1 import common_pb2, events_pb2
from earmark_runtime.db import migrate, open_pool
from earmark_search.catalog import MAX_BUCKET_BITS, Catalog, decode_entry_rows
from earmark_search.schema import MIGRATIONS, SCHEMA
from earmark_search.vectors import IndexChoice, SegmentStore
from earmark_search.verification import PEAK_BIN_BITS
from earmark_search.warm_up import warm_up
from earmark_stack import StackInfo

# Far above the 23 bits the landmark extractor uses, so no other test's tracks share them.
HASH_BASE = 1 << 30


def _event(track_id: str, hashes: np.ndarray, times: np.ndarray) -> events_pb2.FingerprintExtracted:
    return events_pb2.FingerprintExtracted(
        submission=events_pb2.SubmissionReceived(
            submission_id=track_id, blob_key=f"sources/{track_id}", source_sha256=track_id
        ),
        landmarks=common_pb2.LandmarkFingerprint(
            algorithm_version=1,
            frame_rate_hz=31.25,
            hashes=hashes.astype("<u4").tobytes(),
            times=times.astype("<u4").tobytes(),
            duration_s=60.0,
        ),
    )


def _fingerprint(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Few distinct hashes, so tracks share packed rows as real music does.
    return HASH_BASE + rng.integers(0, 400, n), np.sort(rng.integers(0, 1875, n))


def _as_set(postings: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[tuple[int, int, int]]:
    return sorted(zip(*(column.tolist() for column in postings), strict=True))


@pytest.fixture
async def catalog(stack: StackInfo) -> AsyncIterator[Catalog]:
    pool = await open_pool(stack.database_url, min_size=1, max_size=4)
    try:
        yield Catalog(pool)
    finally:
        await pool.close()


async def test_compaction_moves_postings_without_changing_what_a_lookup_sees(
    stack: StackInfo, catalog: Catalog
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    prints = {track_id: _fingerprint(seed) for seed, track_id in enumerate(ids, 4100)}
    every_hash = np.arange(HASH_BASE, HASH_BASE + 400)
    try:
        keys = {t: await catalog.index_track(_event(t, *prints[t])) for t in ids}
        expected = sorted(
            (int(h), keys[t], int(tm)) for t in ids for h, tm in zip(*prints[t], strict=True)
        )
        assert _as_set(await catalog.postings(every_hash)) == expected

        # One hash per row, packed in place (the service's own compactor may
        # have packed them first, or re-bucketed them: this packs them back).
        await catalog.compact(bits=0)
        assert _packed_rows(stack) == (0, 400, 9000, True)
        assert _as_set(await catalog.postings(every_hash)) == expected

        # A new track lands in the recent part; the lookup sees both parts.
        newcomer = str(uuid.uuid4())
        ids.append(newcomer)
        prints[newcomer] = _fingerprint(4200)
        keys[newcomer] = await catalog.index_track(_event(newcomer, *prints[newcomer]))
        expected = sorted(
            expected
            + [(int(h), keys[newcomer], int(tm)) for h, tm in zip(*prints[newcomer], strict=True)]
        )
        assert _as_set(await catalog.postings(every_hash)) == expected

        # Deleting a packed track removes exactly its entries from the shared rows.
        gone = ids[0]
        assert await catalog.delete_track(gone)
        expected = [p for p in expected if p[1] != keys[gone]]
        assert _as_set(await catalog.postings(every_hash)) == expected

        # Re-indexing a packed track replaces its postings, never doubles them.
        again = ids[1]
        new_hashes, new_times = _fingerprint(4300, n=500)
        assert await catalog.reindex_track(_event(again, new_hashes, new_times))
        expected = sorted(
            [p for p in expected if p[1] != keys[again]]
            + [(int(h), keys[again], int(tm)) for h, tm in zip(new_hashes, new_times, strict=True)]
        )
        assert _as_set(await catalog.postings(every_hash)) == expected
        await catalog.compact()
        assert _as_set(await catalog.postings(every_hash)) == expected
    finally:
        for track_id in ids:
            await catalog.delete_track(track_id)
    assert _as_set(await catalog.postings(every_hash)) == []
    assert _packed_rows(stack)[1:] == (0, None, None)  # emptied rows are removed, not kept empty


def _packed_rows(stack: StackInfo) -> tuple[int, int, int | None, bool | None]:
    """(layout bits, packed rows, their entries, whether every n counts them) of HASH_BASE on."""
    with psycopg.connect(stack.database_url) as conn:
        recent = conn.execute(
            "SELECT count(*) FROM catalog.recent_postings WHERE hash >= %s", (HASH_BASE,)
        ).fetchone()
        assert recent is not None and recent[0] == 0
        row = conn.execute(
            "SELECT l.bits, count(p.*), sum(length(p.entries) / 8), "
            "bool_and(p.n * 8 = length(p.entries)) "
            "FROM (SELECT n AS bits FROM catalog.packed_postings WHERE hash = -1) l "
            "LEFT JOIN catalog.packed_postings p ON p.hash >= %s >> l.bits GROUP BY l.bits",
            (HASH_BASE,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), row[2], row[3]


async def test_a_small_catalog_packs_neighbouring_hashes_into_one_row_and_back(
    stack: StackInfo, catalog: Catalog
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    prints = {track_id: _fingerprint(seed) for seed, track_id in enumerate(ids, 4400)}
    every_hash = np.arange(HASH_BASE, HASH_BASE + 400)
    try:
        keys = {t: await catalog.index_track(_event(t, *prints[t])) for t in ids}
        expected = sorted(
            (int(h), keys[t], int(tm)) for t in ids for h, tm in zip(*prints[t], strict=True)
        )
        # The catalog's own size picks the layout: a test catalog is tiny.
        await catalog.compact()
        rows = -(-400 >> MAX_BUCKET_BITS)  # 400 hashes, aligned: 13 rows of 32
        assert _packed_rows(stack) == (MAX_BUCKET_BITS, rows, 9000, True)
        assert _as_set(await catalog.postings(every_hash)) == expected
        # Rows of several hashes give each lookup only its own hashes' postings.
        some = every_hash[::7]
        assert _as_set(await catalog.postings(some)) == [p for p in expected if p[0] in set(some)]
        postings, left_out = await catalog.rarest_postings(every_hash, 10**6, parts=2)
        assert _as_set(postings) == expected and left_out == 0
        # The view decodes them whole.
        with psycopg.connect(stack.database_url) as conn:
            viewed = conn.execute(
                "SELECT hash, track_key, t FROM catalog.postings WHERE hash >= %s ORDER BY 1, 2, 3",
                (HASH_BASE,),
            ).fetchall()
        assert viewed == expected

        # A delete takes its entries out of the shared rows; a newcomer joins
        # through the recent part and the next packing; other layouts keep all.
        assert await catalog.delete_track(ids[0])
        expected = [p for p in expected if p[1] != keys[ids[0]]]
        newcomer = str(uuid.uuid4())
        ids.append(newcomer)
        hashes, times = _fingerprint(4500)
        keys[newcomer] = await catalog.index_track(_event(newcomer, hashes, times))
        expected = sorted(
            expected
            + [(int(h), keys[newcomer], int(t)) for h, t in zip(hashes, times, strict=True)]
        )
        assert _as_set(await catalog.postings(every_hash)) == expected
        for bits in (2, 0, MAX_BUCKET_BITS):
            await catalog.compact(bits=bits)
            assert _packed_rows(stack)[0] == bits
            assert _as_set(await catalog.postings(every_hash)) == expected
    finally:
        for track_id in ids:
            await catalog.delete_track(track_id)
    assert _as_set(await catalog.postings(every_hash)) == []
    assert _packed_rows(stack)[1:] == (0, None, None)


async def test_hashes_the_index_cannot_key_are_refused(catalog: Catalog) -> None:
    track_id = str(uuid.uuid4())
    with pytest.raises(ValueError, match="beyond 31 bits"):
        await catalog.index_track(_event(track_id, np.array([1 << 31]), np.array([5])))
    with pytest.raises(ValueError, match="beyond the index"):
        await catalog.index_track(_event(track_id, np.array([5]), np.array([1 << 24])))
    assert await catalog.get_track(track_id) is None


# The migration that turned packed_postings.entries from bigint[] into bytea.
ENTRIES_AS_BYTEA = 6


async def test_the_bytea_migration_keeps_every_posting_and_its_order(stack: StackInfo) -> None:
    assert "TYPE bytea" in MIGRATIONS[ENTRIES_AS_BYTEA - 1]
    name = f"migration_{uuid.uuid4().hex[:12]}"
    admin = make_conninfo(stack.database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(stack.database_url, dbname=name)
    # (hash, track_keys, times) of packed rows in the old layout, entries in this
    # order: the largest hash, track key and time (as migration 7 bounds
    # them), a row emptied by a delete (none are left so, but one may be), rows
    # past the 1-byte varlena header and past the TOAST threshold.
    rows = [
        (2**31 - 5, [3, 1, 3], [7, 0, 2**24 - 1]),
        (17, [2**31 - 1, 2], [5, 2**24 - 1]),
        (18, [2], [9]),
        (19, [], []),
        (1000, [3, 1, 2] * 10, list(range(30, 0, -1))),
        (1001, [2, 3, 1] * 300, list(range(900))),
    ]
    recent = [(17, 1, 4), (2**31 - 5, 2, 8), (20, 3, 1)]
    pool = await open_pool(url, min_size=1, max_size=2)
    try:
        assert await migrate(pool, SCHEMA, MIGRATIONS[: ENTRIES_AS_BYTEA - 1]) == 5
        with psycopg.connect(url) as conn:
            conn.execute(
                "INSERT INTO catalog.tracks (track_key, track_id, external_id, duration_s, "
                "source_sha256, blob_key, landmark_count, algorithm_version, frame_rate_hz) "
                "OVERRIDING SYSTEM VALUE SELECT k, gen_random_uuid(), '', 1, '', '', 0, 1, 31.25 "
                "FROM unnest(%s::integer[]) AS k",
                ([1, 2, 3, 2**31 - 1],),
            )
            for key in (1, 2, 3, 2**31 - 1):
                hashes = {h for h, keys, _ in rows if key in keys} | {
                    h for h, k, _ in recent if k == key
                }
                conn.execute(
                    "INSERT INTO catalog.fingerprints (track_key, hashes) VALUES (%s, %s)",
                    (key, sorted(np.array(sorted(hashes), "<u4").view("<i4").tolist())),
                )
            for h, keys, times in rows:
                conn.execute(
                    "INSERT INTO catalog.packed_postings (hash, n, entries) "
                    "VALUES (%s, %s, %s::bigint[])",
                    (
                        int(np.uint32(h).view(np.int32)),
                        len(keys),
                        [k << 32 | t for k, t in zip(keys, times, strict=True)],
                    ),
                )
            for h, k, t in recent:
                conn.execute(
                    "INSERT INTO catalog.recent_postings (hash, track_key, t) VALUES (%s, %s, %s)",
                    (int(np.uint32(h).view(np.int32)), k, t),
                )
        catalog = Catalog(pool)
        asked = np.array([h for h, _, _ in rows] + [20, 21], dtype=np.uint32)
        expected = sorted(
            [(h, k, t) for h, keys, times in rows for k, t in zip(keys, times, strict=True)]
            + recent
        )
        view = "SELECT hash::bigint & 4294967295, track_key, t FROM catalog.postings ORDER BY 1,2,3"
        with psycopg.connect(url) as conn:
            assert [tuple(r) for r in conn.execute(view)] == expected

        assert await migrate(pool, SCHEMA, MIGRATIONS) == len(MIGRATIONS)
        assert _as_set(await catalog.postings(asked)) == expected
        with psycopg.connect(url) as conn:
            assert [tuple(r) for r in conn.execute(view)] == expected
            assert conn.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'catalog.packed_postings'::regclass AND attname = 'entries'"
            ).fetchone() == ("bytea",)
            # Each row's entries in their old order, its n unchanged.
            packed = conn.execute(
                "SELECT hash, n, entries FROM catalog.packed_postings WHERE hash <> -1 "
                "ORDER BY hash"
            ).fetchall()
        by_hash = {int(np.int32(h).view(np.uint32)): (n, e) for h, n, e in packed}
        assert sorted(by_hash) == sorted(h for h, _, _ in rows)
        for h, keys, times in rows:
            n, entries = by_hash[h]
            (_, tracks, frames), _ = decode_entry_rows([(h, 0, entries)])
            assert (n, tracks.tolist(), frames.tolist()) == (len(keys), keys, times)

        # The migrated rows are written as any other: a delete takes out
        # exactly its track's entries, and a compaction appends to them.
        assert await catalog.delete_track(_track_id(url, 2))
        expected = [p for p in expected if p[1] != 2]
        assert await catalog.compact(bits=0) == 2
        assert _as_set(await catalog.postings(asked)) == expected
        with psycopg.connect(url) as conn:
            left = conn.execute(
                "SELECT hash, n, length(entries) FROM catalog.packed_postings "
                "WHERE hash >= 0 ORDER BY hash"
            ).fetchall()
        assert (18, 1, 8) not in left  # its only entry was track 2's: the row is gone
        assert all(n * 8 == size for _, n, size in left)
        # Left to choose, the compaction packs this small catalog into buckets.
        await catalog.compact()
        assert _as_set(await catalog.postings(asked)) == expected
    finally:
        await pool.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _pages_on_disk(url: str, table: str) -> int:
    """Pages of the table, its TOAST and its indexes."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT pg_total_relation_size(%s::regclass) / current_setting('block_size')::int",
            (f"{SCHEMA}.{table}",),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _track_id(url: str, track_key: int) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT track_id::text FROM catalog.tracks WHERE track_key = %s", (track_key,)
        ).fetchone()
    assert row is not None
    return str(row[0])


async def test_lookups_during_a_compaction_see_every_posting_once(
    stack: StackInfo, catalog: Catalog
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(4)]
    every_hash = np.arange(HASH_BASE, HASH_BASE + 400)
    try:
        for seed, track_id in enumerate(ids, 4400):
            await catalog.index_track(_event(track_id, *_fingerprint(seed)))
        before = _as_set(await catalog.postings(every_hash))
        assert len(before) == 12_000
        seen: list[list[tuple[int, int, int]]] = []

        async def look_up_until(done: asyncio.Task[int]) -> None:
            while not done.done():
                seen.append(_as_set(await catalog.postings(every_hash)))

        # In place in slices, then rebuilt and swapped in (twice each way), with
        # several readers at once: none may see a partial move or deadlock the swap.
        for bits in (None, 2, 0, 3, 0):
            compaction = asyncio.create_task(catalog.compact(slices=64, bits=bits))
            await asyncio.gather(compaction, *(look_up_until(compaction) for _ in range(3)))
            # Emptied, recent_postings gives its pages back: only the B-tree's
            # metapage is left (the index's size on disk counts it).
            assert _pages_on_disk(stack.database_url, "recent_postings") == 1
        seen.append(_as_set(await catalog.postings(every_hash)))
        assert len(seen) > 5
        assert all(s == before for s in seen), "a lookup saw a posting twice or not at all"
    finally:
        for track_id in ids:
            await catalog.delete_track(track_id)


async def test_a_postings_budget_reads_the_rarest_packed_hashes_that_fit(
    stack: StackInfo, catalog: Catalog
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(2)]
    try:
        prints = [_fingerprint(seed) for seed in (4500, 4501)]
        for track_id, (hashes, times) in zip(ids, prints, strict=True):
            await catalog.index_track(_event(track_id, hashes, times))
        await catalog.compact(bits=0)  # one hash per row: the budget ranks hashes
        asked = np.arange(HASH_BASE, HASH_BASE + 50)
        everything = await catalog.postings(asked)
        found, counts = np.unique(everything[0], return_counts=True)
        assert counts.sum() > 100 and len(set(counts.tolist())) > 1
        budget = int(counts.sum() // 3)
        order = np.lexsort((found, counts))  # rarest first, ties by hash as in SQL
        fits = found[order][np.cumsum(counts[order]) <= budget]

        (hashes, _, _), left_out = await catalog.rarest_postings(asked, budget)
        assert sorted(set(hashes.tolist())) == sorted(fits.tolist())
        assert 0 < hashes.size <= budget
        assert left_out == found.size - fits.size > 0
        _, nothing_left = await catalog.rarest_postings(asked, int(counts.sum()))
        assert nothing_left == 0
        # The most common hash is the first to go.
        assert found[np.argmax(counts)] not in set(hashes.tolist())

        # Read in two hash ranges at once: the same postings when neither share
        # of the budget binds; when they do, each range keeps its rarest within
        # its share (by distinct hashes, so one range may bind before the whole).
        roomy = 2 * int(counts.sum())
        split, split_left = await catalog.rarest_postings(asked, roomy, parts=2)
        assert split_left == 0 and _as_set(split) == _as_set(everything)
        (split_hashes, _, _), split_left = await catalog.rarest_postings(asked, budget, parts=2)
        halves = np.array_split(np.unique(asked.astype("<u4")), 2)
        for half in halves:
            kept = np.isin(split_hashes, half)
            assert kept.sum() <= budget * half.size // asked.size
            in_half = np.isin(found, half)
            assert set(split_hashes[kept].tolist()) <= set(found[in_half].tolist())
        assert split_left > 0 and 0 < split_hashes.size <= budget

        # Rows of 2**bits hashes are ranked as rows, the budget scaled alike:
        # still a subset of the postings, whole hashes, and all of them when it fits.
        await catalog.compact(bits=3)
        assert _as_set(await catalog.postings(asked)) == _as_set(everything)
        bucketed, bucketed_left = await catalog.rarest_postings(asked, budget // 8)
        assert bucketed_left > 0 and 0 < bucketed[0].size < everything[0].size
        assert set(_as_set(bucketed)) <= set(_as_set(everything))
        kept, kept_counts = np.unique(bucketed[0], return_counts=True)
        assert kept_counts.tolist() == counts[np.isin(found, kept)].tolist()
        _, nothing_left = await catalog.rarest_postings(asked, int(counts.sum()))
        assert nothing_left == 0
    finally:
        for track_id in ids:
            await catalog.delete_track(track_id)


async def test_an_interrupted_compaction_loses_nothing_and_the_next_one_finishes(
    stack: StackInfo, catalog: Catalog
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(4)]
    every_hash = np.arange(HASH_BASE, HASH_BASE + 400)
    try:
        for seed, track_id in enumerate(ids, 4600):
            await catalog.index_track(_event(track_id, *_fingerprint(seed)))
        before = _as_set(await catalog.postings(every_hash))
        compaction = asyncio.create_task(catalog.compact(slices=256))
        await asyncio.sleep(0.05)  # some slices done, most not
        compaction.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await compaction
        assert _as_set(await catalog.postings(every_hash)) == before
        await catalog.compact()
        with psycopg.connect(stack.database_url) as conn:
            recent = conn.execute(
                "SELECT count(*) FROM catalog.recent_postings WHERE hash >= %s", (HASH_BASE,)
            ).fetchone()
        assert recent is not None and recent[0] == 0
        assert _as_set(await catalog.postings(every_hash)) == before
    finally:
        for track_id in ids:
            await catalog.delete_track(track_id)


async def test_a_tracks_peaks_are_kept_replaced_by_a_reindex_and_deleted_with_it(
    stack: StackInfo, catalog: Catalog
) -> None:
    track_id = str(uuid.uuid4())
    hashes, times = _fingerprint(4700, n=50)

    def with_peaks(frames: list[int], bins: list[int]) -> events_pb2.FingerprintExtracted:
        event = _event(track_id, hashes, times)
        event.landmarks.peak_times = np.array(frames, "<u4").tobytes()
        event.landmarks.peak_bins = np.array(bins, "<u4").tobytes()
        return event

    try:
        key = await catalog.index_track(with_peaks([7, 3, 3], [40, 90, 30]))
        assert (await catalog.track_peaks(key)).tolist() == [
            3 << PEAK_BIN_BITS | 30,
            3 << PEAK_BIN_BITS | 90,
            7 << PEAK_BIN_BITS | 40,
        ]
        assert await catalog.reindex_track(with_peaks([5], [60]))
        assert (await catalog.track_peaks(key)).tolist() == [5 << PEAK_BIN_BITS | 60]
        with pytest.raises(ValueError, match="peak"):  # refused before anything is written
            await catalog.reindex_track(with_peaks([5, 6], [60]))
        assert (await catalog.track_peaks(key)).tolist() == [5 << PEAK_BIN_BITS | 60]
    finally:
        await catalog.delete_track(track_id)
    assert (await catalog.track_peaks(key)).size == 0


async def test_the_start_up_warm_up_runs_every_stage_and_writes_nothing(
    catalog: Catalog, stack: StackInfo, tmp_path: Path
) -> None:
    store = SegmentStore(str(tmp_path / "segments.db"), dim=128, index=IndexChoice("FLAT"))
    try:
        rng = np.random.default_rng(5)
        vectors = rng.standard_normal((40, 128)).astype(np.float32)
        store.write_track(
            7, np.arange(40) * 0.5, vectors / np.linalg.norm(vectors, axis=1)[:, None]
        )
        with psycopg.connect(stack.database_url) as conn:
            before = conn.execute("SELECT count(*) FROM catalog.postings").fetchone()
        assert await warm_up(catalog, store)
        assert await warm_up(catalog, None)
        with psycopg.connect(stack.database_url) as conn:
            after = conn.execute("SELECT count(*) FROM catalog.postings").fetchone()
        assert after == before
        assert store.has_track(7)
    finally:
        store.close()
