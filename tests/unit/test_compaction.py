"""When recent postings are packed into the per-hash index."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from earmark_search.catalog import (
    FULL_WIDTH_POSTINGS,
    MAX_BUCKET_BITS,
    HashArray,
    _HashArrayDumper,
    bucket_bits_for,
    decode_entry_rows,
    entry_bytes,
    pack_entries,
)
from earmark_search.compaction import CompactionPolicy, Compactor, IdleFlush

POLICY = CompactionPolicy(rows=1000, idle_s=10.0)


def test_nothing_waiting_is_never_due() -> None:
    assert not POLICY.due(0, 0, idle_s=1e9)
    assert not POLICY.due(0, 10**9, idle_s=1e9)


def test_a_full_batch_is_packed_even_while_indexing() -> None:
    assert POLICY.due(1000, 1000, idle_s=0.0)
    assert not POLICY.due(999, 999, idle_s=0.0)


def test_a_large_catalog_waits_for_a_quarter_of_itself() -> None:
    # 100k packed: 1,000 recent is the fixed batch but not a quarter of the catalog.
    assert not POLICY.due(1000, 101_000, idle_s=0.0)
    assert POLICY.due(25_000, 125_000, idle_s=0.0)


def test_a_pause_packs_a_small_backlog_unless_it_is_negligible() -> None:
    assert not POLICY.due(50, 50, idle_s=9.9)
    assert POLICY.due(50, 50, idle_s=10.0)  # empty packed index: anything is worth it
    assert POLICY.due(2000, 102_000, idle_s=10.0)  # 2 % of the catalog
    assert not POLICY.due(500, 100_500, idle_s=10.0)  # 0.5 %: its lookups cost little


class _Catalog:
    def __init__(self, recent: int, total: int) -> None:
        self.recent, self.total, self.compactions = recent, total, 0

    async def backlog(self) -> tuple[int, int]:
        return self.recent, self.total

    async def compact(self) -> int:
        moved, self.recent = self.recent, 0
        self.compactions += 1
        return moved


async def test_the_compactor_packs_when_due_and_then_rests_until_the_next_write() -> None:
    catalog = _Catalog(recent=5, total=5)
    compactor = Compactor(catalog, CompactionPolicy(rows=1000, idle_s=0.0))
    assert await compactor.run_once() == 5
    assert await compactor.run_once() == 0  # checked: nothing left
    assert await compactor.run_once() == 0
    catalog.recent, catalog.total = 7, 12
    compactor.wrote()
    assert await compactor.run_once() == 7
    assert catalog.compactions == 2


async def test_the_compactor_keeps_checking_while_writes_continue() -> None:
    catalog = _Catalog(recent=5, total=10_000)
    compactor = Compactor(catalog, CompactionPolicy(rows=1000, idle_s=3600.0))
    compactor.wrote()
    assert await compactor.run_once() == 0  # not due: small, and not idle yet
    catalog.recent = 5000
    assert await compactor.run_once() == 5000  # still checked, and now due


def _int8send(entries: np.ndarray | None) -> bytes | None:
    """A row's entries as PostgreSQL stores them: int8send() of each, end to end."""
    if entries is None:  # NULL
        return None
    return b"".join(struct.pack(">q", int(e)) for e in entries)


def _rows(
    rows: list[tuple[int, np.ndarray | None]], bits: int = 0
) -> list[tuple[int, int, bytes | None]]:
    return [(key, bits, _int8send(entries)) for key, entries in rows]


def test_packed_rows_decode_to_one_posting_per_entry() -> None:
    first = pack_entries(np.array([3, 3, 9]), np.array([0, 70_000, 2**24 - 1]))
    second = pack_entries(np.array([1]), np.array([12]))
    (hashes, tracks, times), left_out = decode_entry_rows(
        _rows([(-5, first), (7, np.empty(0, np.int64)), (9, None), (2**23 - 1, second)])
    )
    assert left_out == 1
    assert hashes.tolist() == [2**32 - 5] * 3 + [2**23 - 1]  # unsigned, bit for bit
    assert tracks.tolist() == [3, 3, 9, 1]
    assert times.tolist() == [0, 70_000, 2**24 - 1, 12]


def test_a_row_of_several_hashes_gives_each_posting_its_whole_hash() -> None:
    # Bits 3: row 5 holds hashes 40..47, each entry its hash's low 3 bits.
    entries = pack_entries(np.array([2, 2, 7]), np.array([10, 11, 12]), np.array([0, 7, 3]))
    (hashes, tracks, times), _ = decode_entry_rows(_rows([(5, entries)], bits=3))
    assert hashes.tolist() == [40, 47, 43]
    assert tracks.tolist() == [2, 2, 7] and times.tolist() == [10, 11, 12]


def test_only_the_wanted_hashes_of_a_row_are_kept() -> None:
    # Bits 3: row 5 holds hashes 40..47, row 6 holds 48..55 (none wanted).
    row5 = pack_entries(np.array([2, 2, 7, 8]), np.array([10, 11, 12, 13]), np.array([0, 7, 3, 3]))
    row6 = pack_entries(np.array([4]), np.array([14]), np.array([1]))
    rows = _rows([(5, row5), (6, row6)], bits=3)
    wanted = np.array([43, 44, 99], dtype=np.int64)
    (hashes, tracks, times), _ = decode_entry_rows(rows, wanted)
    assert hashes.tolist() == [43, 43] and tracks.tolist() == [7, 8] and times.tolist() == [12, 13]
    assert decode_entry_rows(rows, np.array([], dtype=np.int64))[0][0].size == 0
    # Every hash of the rows wanted: nothing dropped.
    (hashes, _, _), _ = decode_entry_rows(rows, np.arange(40, 56, dtype=np.int64))
    assert hashes.tolist() == [40, 47, 43, 43, 49]


def test_rows_of_a_layout_too_wide_for_one_mask_are_filtered_hash_by_hash() -> None:
    # Bits 7: row 1 holds hashes 128..255.
    entries = pack_entries(np.array([1, 2, 3]), np.array([5, 6, 7]), np.array([0, 100, 127]))
    (hashes, tracks, _), _ = decode_entry_rows(
        _rows([(1, entries)], bits=7), np.array([228, 255], dtype=np.int64)
    )
    assert hashes.tolist() == [228, 255] and tracks.tolist() == [2, 3]


@pytest.mark.parametrize(
    ("postings", "bits"),
    [
        (0, MAX_BUCKET_BITS),
        (2_640_000, 5),  # ~4 h of audio
        (5_300_000, 4),  # ~8 h
        (FULL_WIDTH_POSTINGS // 2, 1),
        (FULL_WIDTH_POSTINGS, 0),
        (FULL_WIDTH_POSTINGS * 40, 0),
    ],
)
def test_rows_span_fewer_hashes_as_the_catalog_grows(postings: int, bits: int) -> None:
    assert bucket_bits_for(postings) == bits


def test_no_rows_decode_to_no_postings() -> None:
    (hashes, tracks, times), left_out = decode_entry_rows([])
    assert hashes.size == tracks.size == times.size == left_out == 0


@pytest.mark.parametrize("track_key", [1, 2**31 - 1])
def test_entries_keep_the_whole_track_key(track_key: int) -> None:
    entries = pack_entries(np.array([track_key]), np.array([5]))
    assert int(entries[0]) >> 32 == track_key
    # Stored big-endian, so an entry's first 4 bytes are int4send(track_key).
    assert entry_bytes(entries)[:4] == struct.pack(">i", track_key)
    assert entry_bytes(entries) == _int8send(entries)


def test_entries_as_memoryviews_decode_alike() -> None:
    entries = pack_entries(np.array([4, 2]), np.array([1, 2]))
    (hashes, tracks, times), _ = decode_entry_rows([(3, 0, memoryview(entry_bytes(entries)))])
    assert hashes.tolist() == [3, 3] and tracks.tolist() == [4, 2] and times.tolist() == [1, 2]


async def test_the_neural_index_is_sealed_once_after_writes_pause() -> None:
    flushes: list[int] = []

    async def flush() -> None:
        flushes.append(1)

    idle = IdleFlush(flush, idle_s=0.0)
    assert not await idle.run_once()  # nothing written yet
    idle.wrote()
    idle.wrote()
    assert await idle.run_once()
    assert not await idle.run_once()  # sealed; nothing new
    assert len(flushes) == 1
    waiting = IdleFlush(flush, idle_s=3600.0)
    waiting.wrote()
    assert not await waiting.run_once()  # writes have not paused yet


async def test_a_failed_flush_is_tried_again() -> None:
    calls: list[int] = []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("milvus restarting")

    idle = IdleFlush(flaky, idle_s=0.0)
    idle.wrote()
    with pytest.raises(ConnectionError):
        await idle.run_once()
    assert await idle.run_once()
    assert len(calls) == 2


def test_entries_that_are_not_whole_8_byte_integers_are_refused() -> None:
    # e.g. an array_send() of a bigint[] (20 header bytes, a length before each value).
    array = struct.pack(">iiiii", 1, 0, 20, 2, 1) + struct.pack(">iqiq", 8, 5, 8, 6)
    assert len(array) % 8
    with pytest.raises(ValueError, match="8-byte"):
        decode_entry_rows([(7, 0, array)])


def test_hashes_are_bound_as_a_binary_int4_array_bit_for_bit() -> None:
    dumper = _HashArrayDumper(HashArray)
    data = dumper.dump(HashArray(np.array([0, 7, 2**32 - 5], dtype=np.uint32)))
    assert dumper.oid == 1007  # int4[]
    assert struct.unpack_from(">iiiii", data) == (1, 0, 23, 3, 1)
    values = struct.unpack_from(">" + "ii" * 3, data, 20)
    assert values == (4, 0, 4, 7, 4, -5)  # unsigned hashes travel as signed int4
    assert dumper.dump(HashArray(np.zeros(0, np.uint32))) == struct.pack(">iii", 0, 0, 23)


@pytest.mark.parametrize("bits", [0, 1, 3, 5])
def test_filtering_by_row_masks_keeps_exactly_the_wanted_hashes(bits: int) -> None:
    rng = np.random.default_rng(bits)
    all_hashes = rng.integers(0, 4096, 3000)
    tracks, times = rng.integers(1, 50, 3000), rng.integers(0, 2**24, 3000)
    order = np.argsort(all_hashes >> bits, kind="stable")
    all_hashes, tracks, times = all_hashes[order], tracks[order], times[order]
    keys, starts = np.unique(all_hashes >> bits, return_index=True)
    rows = [
        (int(key), bits, entry_bytes(pack_entries(t, f, h & ((1 << bits) - 1))))
        for key, h, t, f in zip(
            keys,
            np.split(all_hashes, starts[1:]),
            np.split(tracks, starts[1:]),
            np.split(times, starts[1:]),
            strict=True,
        )
    ]
    wanted = np.unique(rng.integers(0, 4096, 500))
    if bits == 0:  # the lookup reads only the wanted hashes' rows at one hash per row
        wanted_keys = set(wanted.tolist())
        rows = [row for row in rows if row[0] in wanted_keys]
    (hashes, got_tracks, got_times), _ = decode_entry_rows(rows, wanted)
    expected = np.isin(all_hashes, wanted)
    assert _as_set(hashes, got_tracks, got_times) == _as_set(
        all_hashes[expected], tracks[expected], times[expected]
    )


def _as_set(*columns: np.ndarray) -> list[tuple[int, ...]]:
    return sorted(zip(*(column.tolist() for column in columns), strict=True))
