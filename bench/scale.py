"""Identify as the catalog grows: search-side latency, postings read and top-1 at
several catalog sizes (default 10, 100 and 1,000 hours).

The catalog at each size:
* the corpus tracks (real music, `make corpus`), indexed through
  `Catalog.index_track` and packed by `Catalog.compact`, the service's own path;
* synthetic distractors made from the same tracks' landmarks: each variant
  transposes every track by k frequency bins (k = +-1 .. +-60, i.e. up to
  +-470 Hz) and/or plays it backwards (anchor and target swap). They have the
  hash statistics of real music in this style, which is what sets how many
  postings a query meets, without being copies a query could match: a clip's
  hashes name absolute frequencies. Their packed rows are written straight
  into `packed_postings` (what compacting them would leave there; they get
  track rows but no `fingerprints` rows, as nothing deletes them), so 1,000
  hours load in minutes instead of the hours of fingerprinting audio. The
  catalog is then packed in the layout a catalog grown to its size has
  (`bucket_bits_for`: 2^bits neighbouring hashes per row, column "row bits").

Queries: 5 s clips of corpus tracks at seeded offsets, clean and with pink
noise at 5 dB SNR (bench.degrade), fingerprinted once in-process. At each size
the search side runs in-process exactly as the service runs it:
`identify(method=LANDMARKS)` = budgeted postings lookup + offset vote + track
rows; the same clips are also looked up without the postings budget to show
what the budget saves. Extraction (fingerprint service) does not depend on the
catalog; its time is reported once.

    .venv/bin/python -m bench.scale --hours 10,100,1000
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import psycopg

from bench.corpus import DEFAULT_CORPUS_DIR, decode_audio, list_corpus
from bench.degrade import conditions_by_name
from bench.report import markdown_table
from earmark.v1 import common_pb2, events_pb2, search_pb2
from earmark_fingerprint.extraction import to_proto
from earmark_fingerprint.landmarks import (
    DF_OFFSET,
    DF_SHIFT,
    F1_SHIFT,
    FRAME_RATE_HZ,
    MAX_BIN,
    MIN_BIN,
    SAMPLE_RATE_HZ,
    extract_landmarks,
    extract_query_landmarks,
)
from earmark_runtime.db import migrate, open_pool
from earmark_search.catalog import (
    Catalog,
    Postings,
    TrackRow,
    bucket_bits_for,
    entry_bytes,
    pack_entries,
)
from earmark_search.identify import POSTINGS_PER_QUERY_HASH, identify
from earmark_search.schema import MIGRATIONS, SCHEMA
from earmark_stack.processes import ensure_database, free_port, start_postgres, stop_postgres

CLIP_S = 5.0
FIRST_DISTRACTOR_KEY = 1_000_000
TRANSPOSITIONS = [k for step in range(1, 61) for k in (step, -step)]
VARIANTS = [(0, True)] + [(k, reverse) for k in TRANSPOSITIONS for reverse in (False, True)]
F1_PER_PARTITION = 4
_F1_MASK = 0x1FF
_DF_MASK = 0xFF
_DT_MASK = 0x3F


def log(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class BaseTrack:
    name: str
    duration_s: float
    hashes: np.ndarray
    times: np.ndarray


@dataclass
class Query:
    track: int
    condition: str
    landmarks: common_pb2.LandmarkFingerprint
    extract_ms: float


# Every HOLD_OUT_EVERY-th corpus track stays out of the catalog (and out of the
# distractors): its clips are the out-of-catalog queries.
HOLD_OUT_EVERY = 7
NEGATIVE = "out-of-catalog"


def fingerprint_corpus(
    corpus: Path, conditions: Sequence[str], per_condition: int, seed: int
) -> tuple[list[BaseTrack], list[Query]]:
    tracks = list_corpus(corpus)
    if not tracks:
        raise SystemExit(f"no usable tracks under {corpus} (run `make corpus`)")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(tracks), size=min(per_condition, len(tracks)), replace=False)
    base: list[BaseTrack] = []
    queries: list[Query] = []
    conds = conditions_by_name(list(conditions))
    clip = int(CLIP_S * SAMPLE_RATE_HZ)
    for i, track in enumerate(tracks):
        audio = decode_audio(track.path, sr=SAMPLE_RATE_HZ)
        held_out = i % HOLD_OUT_EVERY == HOLD_OUT_EVERY // 2
        if not held_out:
            lm = extract_landmarks(audio)
            base.append(
                BaseTrack(track.path.name, len(audio) / SAMPLE_RATE_HZ, lm.hashes, lm.times)
            )
        if (i not in chosen and not held_out) or len(audio) <= clip:
            continue
        start = int(rng.integers(0, len(audio) - clip))
        for cond in conds[:1] if held_out else conds:
            degraded = cond.apply(audio[start : start + clip], SAMPLE_RATE_HZ, rng, clip, 0)
            started = time.perf_counter()
            query = extract_query_landmarks(degraded)
            extract_ms = (time.perf_counter() - started) * 1000
            name = NEGATIVE if held_out else cond.name
            queries.append(Query(len(base) - 1, name, to_proto(query), extract_ms))
        log(f"  fingerprinted {i + 1}/{len(tracks)} tracks")
    return base, queries


@dataclass
class Variants:
    """The corpus's landmarks split into hash fields, sorted by anchor bin, per direction."""

    f1: dict[bool, np.ndarray] = field(default_factory=dict)
    rest: dict[bool, np.ndarray] = field(default_factory=dict)  # df and dt bits
    times: dict[bool, np.ndarray] = field(default_factory=dict)
    track: dict[bool, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, base: Sequence[BaseTrack]) -> Variants:
        out = cls()
        hashes = np.concatenate([b.hashes for b in base]).astype(np.int64)
        times = np.concatenate([b.times for b in base]).astype(np.int64)
        track = np.repeat(np.arange(len(base)), [b.hashes.size for b in base])
        frames = np.repeat(
            [int(b.duration_s * FRAME_RATE_HZ) for b in base], [b.hashes.size for b in base]
        )
        f1 = (hashes >> F1_SHIFT) & _F1_MASK
        df = ((hashes >> DF_SHIFT) & _DF_MASK) - DF_OFFSET
        dt = hashes & _DT_MASK
        for reverse in (False, True):
            if reverse:  # the target becomes the anchor, time runs backwards
                v_f1, v_df, v_t = f1 + df, -df, frames - times - dt
            else:
                v_f1, v_df, v_t = f1, df, times
            keep = v_t >= 0
            order = np.argsort(v_f1[keep], kind="stable")
            out.f1[reverse] = v_f1[keep][order]
            out.rest[reverse] = (((v_df + DF_OFFSET) << DF_SHIFT) | dt)[keep][order]
            out.times[reverse] = v_t[keep][order]
            out.track[reverse] = track[keep][order]
        return out

    def partition(
        self, variants: Sequence[tuple[int, bool]], f1_low: int, f1_high: int, n_tracks: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(hash, packed entry) of every variant's landmarks whose new anchor bin is in range."""
        hashes, entries = [], []
        for v, (shift, reverse) in enumerate(variants):
            f1 = self.f1[reverse]
            lo, hi = np.searchsorted(f1, [f1_low - shift, f1_high - shift])
            if hi <= lo:
                continue
            new_f1 = f1[lo:hi] + shift
            hashes.append((new_f1 << F1_SHIFT) | self.rest[reverse][lo:hi])
            keys = FIRST_DISTRACTOR_KEY + v * n_tracks + self.track[reverse][lo:hi]
            entries.append(pack_entries(keys, self.times[reverse][lo:hi]))
        if not hashes:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(hashes), np.concatenate(entries)


_ROW = struct.Struct(">hiiiii")  # 3 fields: hash, n, entries (bytea: its length, then data)


def packed_copy(hashes: np.ndarray, entries: np.ndarray) -> Iterator[bytes | memoryview]:
    """Binary COPY data of packed_postings rows (hash, n, entries) for these postings."""
    order = np.argsort(hashes, kind="stable")
    unique, starts, counts = np.unique(hashes[order], return_index=True, return_counts=True)
    data = memoryview(entry_bytes(entries[order]))
    for h, start, n in zip(unique.tolist(), starts.tolist(), counts.tolist(), strict=True):
        yield _ROW.pack(3, 4, h, 4, n, 8 * n)
        yield data[8 * start : 8 * (start + n)]


async def load_distractors(
    database_url: str, base: Sequence[BaseTrack], variants: Sequence[tuple[int, bool]]
) -> int:
    """Track rows and packed rows of the distractors; the postings written."""
    n_tracks = len(base)
    keys = [
        FIRST_DISTRACTOR_KEY + v * n_tracks + i
        for v in range(len(variants))
        for i in range(n_tracks)
    ]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {SCHEMA}.tracks (track_key, track_id, external_id, duration_s, "
            "source_sha256, blob_key, landmark_count, algorithm_version, frame_rate_hz) "
            "OVERRIDING SYSTEM VALUE SELECT k, gen_random_uuid(), 'distractor-' || k, d, '', '', "
            "c, 1, %s FROM unnest(%s::integer[], %s::float8[], %s::integer[]) AS u(k, d, c)",
            (
                FRAME_RATE_HZ,
                keys,
                [b.duration_s for _ in variants for b in base],
                [b.hashes.size for _ in variants for b in base],
            ),
        )
        table_ = Variants.of(base)
        written = 0
        started = time.perf_counter()
        with conn.cursor().copy(
            f"COPY {SCHEMA}.packed_postings (hash, n, entries) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.write(b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8)
            for f1_low in range(MIN_BIN, MAX_BIN, F1_PER_PARTITION):
                hashes, entries = table_.partition(
                    variants, f1_low, min(f1_low + F1_PER_PARTITION, MAX_BIN), n_tracks
                )
                for part in packed_copy(hashes, entries):
                    copy.write(part)
                written += hashes.size
                if (f1_low - MIN_BIN) % (F1_PER_PARTITION * 20) == 0:
                    elapsed = time.perf_counter() - started
                    log(f"    {written / 1e6:.0f} M postings written ({elapsed:.0f} s)")
            copy.write(b"\xff\xff")
    return written


def _event(track_id: str, track: BaseTrack) -> events_pb2.FingerprintExtracted:
    return events_pb2.FingerprintExtracted(
        submission=events_pb2.SubmissionReceived(
            submission_id=track_id,
            external_id=track.name,
            blob_key=f"sources/{track_id}",
            source_sha256=track_id,
            duration_s=track.duration_s,
        ),
        landmarks=common_pb2.LandmarkFingerprint(
            algorithm_version=1,
            frame_rate_hz=FRAME_RATE_HZ,
            hashes=track.hashes.astype("<u4").tobytes(),
            times=track.times.astype("<u4").tobytes(),
            duration_s=track.duration_s,
        ),
    )


@dataclass
class SizeResult:
    hours: float
    postings: int
    index_mb: float
    load_s: float
    bits: int
    passes: dict[int | None, Pass] = field(default_factory=dict)


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    return float(np.percentile(np.asarray(values), q))


class WithBudget:
    """The catalog as identify() sees it, with another postings budget per query hash
    (None: no budget, every posting is read at once)."""

    def __init__(self, catalog: Catalog, per_hash: int | None) -> None:
        self._catalog = catalog
        self._per_hash = per_hash

    async def postings(self, hashes: np.ndarray) -> Postings:
        return await self._catalog.postings(hashes)

    async def rarest_postings(
        self, hashes: np.ndarray, max_postings: int, *, parts: int = 1
    ) -> tuple[Postings, int]:
        if self._per_hash is None:
            return await self._catalog.postings(hashes), 0
        # identify's retry asks for a multiple of its first budget: keep the ratio.
        scaled = max_postings * self._per_hash // POSTINGS_PER_QUERY_HASH
        found: tuple[Postings, int] = await self._catalog.rarest_postings(
            hashes, scaled, parts=parts
        )
        return found

    async def tracks_by_key(self, keys: list[int]) -> dict[int, TrackRow]:
        rows: dict[int, TrackRow] = await self._catalog.tracks_by_key(keys)
        return rows

    async def track_peaks(self, track_key: int) -> np.ndarray:
        # Distractors have no fingerprints row: no peaks, so never verified.
        return await self._catalog.track_peaks(track_key)


@dataclass
class Pass:
    """One budget setting over every query."""

    ms: dict[str, list[float]] = field(default_factory=dict)
    hits: dict[str, list[bool]] = field(default_factory=dict)


async def _one_pass(view: Catalog, queries: Sequence[Query], names: dict[int, str]) -> Pass:
    result = Pass()
    for q in queries:
        started = time.perf_counter()
        response = await identify(view, q.landmarks, 5, method=search_pb2.IDENTIFY_METHOD_LANDMARKS)
        total = (time.perf_counter() - started) * 1000
        prefix = "neg_" if q.condition == NEGATIVE else ""
        for key, value in (
            ("search_ms", total),
            ("lookup_ms", response.timings.lookup_ms),
            ("vote_ms", response.timings.match_ms),
            ("postings", float(response.postings)),
        ):
            result.ms.setdefault(prefix + key, []).append(value)
        top = response.matches[0].track.external_id if response.matches else None
        right = top is None if q.condition == NEGATIVE else top == names[q.track]
        result.hits.setdefault(q.condition, []).append(right)
    return result


async def measure(
    catalog: Catalog, queries: Sequence[Query], names: dict[int, str], budgets: Sequence[int | None]
) -> dict[int | None, Pass]:
    """Every query once per budget, after one unmeasured pass that warms the caches."""
    await _one_pass(cast(Catalog, WithBudget(catalog, None)), queries, names)
    return {
        budget: await _one_pass(cast(Catalog, WithBudget(catalog, budget)), queries, names)
        for budget in budgets
    }


async def run(args: argparse.Namespace) -> int:
    log("== fingerprinting the corpus and the query clips")
    base, queries = fingerprint_corpus(args.corpus, args.conditions, args.per_condition, args.seed)
    base_hours = sum(b.duration_s for b in base) / 3600
    names = {i: b.name for i, b in enumerate(base)}
    log(f"  {len(base)} tracks, {base_hours:.2f} h; {len(queries)} queries")
    extract = [q.extract_ms for q in queries]

    home: Path = args.home
    home.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any work
    port = free_port()
    pgdata = home / "pgdata"
    stop_postgres(pgdata)  # one left by an interrupted run
    start_postgres(pgdata, port, home / "postgres.log")
    results: list[SizeResult] = []
    try:
        ensure_database(port, "earmark")
        url = f"postgresql://earmark@127.0.0.1:{port}/earmark"
        pool = await open_pool(url, min_size=1, max_size=4)
        try:
            await migrate(pool, SCHEMA, MIGRATIONS)
            catalog = Catalog(pool)
            for hours in args.hours:
                log(f"== catalog of {hours:g} h")
                started = time.perf_counter()
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(
                        f"TRUNCATE {SCHEMA}.tracks, {SCHEMA}.fingerprints, {SCHEMA}.renditions, "
                        f"{SCHEMA}.recent_postings, {SCHEMA}.packed_postings"
                    )
                count = max(0, math.ceil((hours - base_hours) / base_hours))
                if count > len(VARIANTS):
                    raise SystemExit(
                        f"at most {(len(VARIANTS) + 1) * base_hours:.0f} h from this corpus"
                    )
                written = await load_distractors(url, base, VARIANTS[:count])
                for i, track in enumerate(base):
                    await catalog.index_track(_event(f"00000000-0000-4000-8000-{i:012d}", track))
                await catalog.compact()
                # A catalog that grew to this size through smaller ones was
                # bucketed all along, and each compaction re-bucketed it for
                # its size (Catalog.compact); one loaded at once and packed
                # hash by hash above REBUCKET_MAX_POSTINGS would not be.
                total_postings = written + sum(b.hashes.size for b in base)
                bits = bucket_bits_for(total_postings)
                if await catalog.layout_bits() != bits:
                    log(f"  re-bucketing at {bits} bits, as a catalog grown to this size")
                    await catalog.compact(bits=bits)
                load_s = time.perf_counter() - started
                with psycopg.connect(url, autocommit=True) as conn:
                    row = conn.execute(
                        "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = %s AND c.relkind IN ('r', 'm')",
                        (SCHEMA,),
                    ).fetchone()
                    size = int(row[0]) if row and row[0] else 0
                real_hours = base_hours * (count + 1)
                log(
                    f"  {real_hours:.0f} h, {total_postings / 1e6:.0f} M postings, "
                    f"{size / 1e6:.0f} MB, loaded in {load_s:.0f} s"
                )
                result = SizeResult(real_hours, total_postings, size / 1e6, load_s, bits)
                result.passes = await measure(catalog, queries, names, args.budgets)
                results.append(result)
                log(render_size(result))
        finally:
            await pool.close()
    finally:
        if not args.keep:
            stop_postgres(pgdata)
    log("")
    log(render(results, extract, args))
    return 0


def _label(budget: int | None) -> str:
    return "none" if budget is None else str(budget)


def render_size(r: SizeResult) -> str:
    return "\n".join(
        f"  budget {_label(b)}: search p50 {_pct(p.ms['search_ms'], 50):.1f} ms "
        f"p99 {_pct(p.ms['search_ms'], 99):.1f} ms, postings p50 {_pct(p.ms['postings'], 50):.0f}"
        for b, p in r.passes.items()
    )


def render(
    results: Sequence[SizeResult], extract_ms: Sequence[float], args: argparse.Namespace
) -> str:
    conditions = list(args.conditions)
    rows = []
    for r in results:
        for budget, p in r.passes.items():
            neg = p.ms.get("neg_search_ms", [])
            rows.append(
                [
                    f"{r.hours:.0f}",
                    f"{r.postings / 1e6:.0f}",
                    f"{r.index_mb / r.hours:.1f}",
                    f"{r.bits}",
                    f"**{_label(budget)}**"
                    if budget == POSTINGS_PER_QUERY_HASH
                    else _label(budget),
                    f"{_pct(p.ms['postings'], 50):.0f}",
                    f"{_pct(p.ms['lookup_ms'], 50):.1f} / {_pct(p.ms['lookup_ms'], 99):.1f}",
                    f"{_pct(p.ms['vote_ms'], 50):.1f} / {_pct(p.ms['vote_ms'], 99):.1f}",
                    f"{_pct(p.ms['search_ms'], 50):.1f} / {_pct(p.ms['search_ms'], 99):.1f}",
                    *[f"{100 * statistics.fmean(p.hits[c]):.1f}" for c in conditions],
                    f"{100 * (1 - statistics.fmean(p.hits[NEGATIVE])):.1f}",
                    f"{_pct(neg, 50):.1f} / {_pct(neg, 99):.1f}",
                ]
            )
    head = [
        "catalog h",
        "postings M",
        "index MB/h",
        "row bits",
        "budget per hash",
        "postings read p50",
        "lookup ms p50/p99",
        "vote ms p50/p99",
        "search side ms p50/p99",
        *[f"top-1 % {c}" for c in conditions],
        "out-of-catalog: false match %",
        "out-of-catalog: search ms p50/p99",
    ]
    first = next(iter(results[0].passes.values())) if results else Pass()
    n_clips = len(first.hits.get(conditions[0], []))
    n_negatives = len(first.hits.get(NEGATIVE, []))
    lines = [
        f"command: python -m bench.scale --hours {','.join(f'{h:g}' for h in args.hours)} "
        f"--per-condition {args.per_condition} "
        f"--budgets {','.join(_label(b) for b in args.budgets)}",
        f"queries: {n_clips} clips of {CLIP_S:g} s x {len(conditions)} conditions, and "
        f"{n_negatives} clean clips of held-out corpus tracks; extraction "
        f"(fingerprint service side, independent of the catalog) p50 "
        f"{_pct(extract_ms, 50):.1f} ms, p99 {_pct(extract_ms, 99):.1f} ms",
        f"the service's budget: {POSTINGS_PER_QUERY_HASH} postings per distinct query hash "
        "(in bold); caches warm (one unmeasured pass first)",
        "",
        markdown_table(head, rows),
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS_DIR)
    ap.add_argument("--home", type=Path, default=Path("/tmp/earmark-scale"))
    ap.add_argument(
        "--hours", type=lambda s: [float(x) for x in s.split(",")], default=[10.0, 100.0, 1000.0]
    )
    ap.add_argument("--conditions", type=lambda s: s.split(","), default=["clean", "pink_5db"])
    ap.add_argument("--per-condition", type=int, default=60, help="query clips per condition")
    ap.add_argument(
        "--budgets",
        type=lambda s: [None if x == "none" else int(x) for x in s.split(",")],
        default=[16, 32, POSTINGS_PER_QUERY_HASH, None],
        help="postings budgets per distinct query hash to compare ('none': read all)",
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", action="store_true", help="leave PostgreSQL running")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
