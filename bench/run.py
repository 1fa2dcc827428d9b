"""`make bench`: the identification benchmark on a real corpus, end to end.

Usage::

    python -m bench.run --corpus ~/.cache/earmark/corpus            # what `make bench` runs
    python -m bench.run --limit 10 --lengths 2,5 --conditions clean,pink_5db --no-docs
    python -m bench.run --methods landmarks --no-docs                # one identify method

Steps:

1. Start a fresh embedded stack (`earmark_stack.up`) under a temporary
   EARMARK_HOME (or ``--home``), with only what the benchmark measures
   (`earmark_stack.IDENTIFY_SERVICES`: ingest, fingerprint, search; no features,
   transcoder or monitor competing for the CPU). Ingest the catalog side of
   `bench.degrade.split_catalog` (80 % of the corpus) through the SDK, with
   parallel uploads, and wait until every track is INDEXED. Measure ingest speed
   end to end, in audio seconds per wall second. Measure the index size with
   ``pg_total_relation_size`` (heap + TOAST + indexes) over every table in the
   ``catalog`` schema, per hour of catalog audio. Then restart search, which
   makes Milvus Lite seal the neural segments it holds unflushed in memory
   (`SEARCH_RESTART_WHY`; ``--no-search-restart`` keeps them there).
2. Build the deterministic query set with `bench.degrade.build_queries`
   (conditions x lengths, plus negatives from the held-out 20 %).
3. Identify every query through the SDK once per identify method
   (``--methods``, default landmarks, neural and fused), one call at a time so
   latencies are not inflated by queueing; the methods take turns query by
   query, so they see the same load. Clips go as 16-bit PCM WAV, which the
   server parses without spawning ffmpeg, or in another container with
   ``--format`` (mp3, ogg, flac, opus), which its ffmpeg decodes as it would a
   user's upload.
4. Split the server-side latency of the 5 s clips in-process, with the
   services' own code and no change to it: the fingerprint RPC called directly,
   the same extraction run in this process, the catalog lookup
   (`Catalog.postings`) and the vote (`rank_matches`): the landmark path, so the
   split's client column is the landmarks method's. Measure reference
   extraction speed on one core (CPU time) on catalog audio.
5. Print the tables (`bench.report`): issue 3's targets on the landmarks
   method, the methods side by side and issue 4's targets. Write the raw records
   (one per query and method, with the top match's confidence and the
   identifiers that found it) to ``--out``/records.jsonl, and add the tables to
   docs/benchmarks.md under a heading with the date, the command, the commit and
   the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import report
from bench.corpus import DEFAULT_CORPUS_DIR, CorpusTrack, decode_audio, list_corpus
from bench.degrade import (
    DEFAULT_LENGTHS,
    BenchPlan,
    Query,
    default_conditions,
    ffmpeg_filters,
)
from bench.synthetic import CLIP_FORMATS, clip_bytes, wav_bytes

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
RESULTS_MARKER = "<!-- bench.run results: newest first -->"
SPLIT_LENGTH_S = 5.0
# Why bench.run restarts search between ingest and identify (--no-search-restart
# skips it): search never flushes the neural index, and Milvus Lite keeps rows
# written since the last flush in a memtable that it copies row by row in Python
# on every search (~0.5-1 s a search at a few hours of catalog). Closing the
# file seals them into an indexed segment.
SEARCH_RESTART_WHY = (
    "kept for comparability with earlier runs (it sealed Milvus Lite's in-memory neural "
    "segments; search now seals them itself once writes pause)"
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ ingest


@dataclass
class IngestResult:
    tracks: int = 0
    indexed: int = 0
    rejected: list[str] = field(default_factory=list)
    audio_s: float = 0.0
    wall_s: float = 0.0

    @property
    def x_realtime(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s else math.nan


def ingest_catalog(em: Any, tracks: Sequence[CorpusTrack], workers: int) -> IngestResult:
    import grpc

    res = IngestResult(tracks=len(tracks))
    started = time.perf_counter()
    subs = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            pool.submit(
                em.upload,
                t.path,
                external_id=t.track_id,
                metadata={"title": t.path.stem, "artist": t.package, "album": t.package},
            ): t
            for t in tracks
        }
        for n, fut in enumerate(as_completed(futures), 1):
            try:
                subs.append(fut.result())
            except grpc.RpcError as exc:
                res.rejected.append(f"{futures[fut].track_id}: {exc.details()}")
            if n % 10 == 0 or n == len(tracks):
                log(f"  uploaded {n}/{len(tracks)} ({time.perf_counter() - started:.0f} s)")
    last = [-1.0]

    def progress(ss: list[Any]) -> None:
        done = sum(s.final for s in ss)
        now = time.perf_counter()
        if now - last[0] >= 15 or done == len(ss):
            last[0] = now
            log(f"  indexed {done}/{len(ss)} ({now - started:.0f} s)")

    final = em.wait([s.submission_id for s in subs], timeout_s=3600, on_progress=progress)
    res.wall_s = time.perf_counter() - started
    for s in final:
        if s.state == "INDEXED":
            res.indexed += 1
            res.audio_s += s.duration_s
        else:
            res.rejected.append(f"{s.external_id}: {s.rejection_code} {s.rejection_message}")
    return res


def index_size(database_url: str) -> dict[str, int]:
    """Bytes per table of the catalog schema: heap + TOAST + every index."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            """
            SELECT c.relname, pg_total_relation_size(c.oid)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'catalog' AND c.relkind IN ('r', 'm')
            ORDER BY 2 DESC
            """
        ).fetchall()
    return {str(name): int(size) for name, size in rows}


# An empty recent_postings (heap, primary key) is a few pages; more means postings.
UNPACKED_NOTE_BYTES = 1_000_000


def wait_for_compaction(database_url: str, timeout_s: float = 180.0) -> float:
    """Seconds until search has packed the postings that ingest left in recent_postings.

    The index is measured as it stays, not mid-merge: the compactor packs a
    backlog once writes pause (EARMARK_COMPACT_IDLE_S).
    """
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.perf_counter() - started < timeout_s:
            row = conn.execute("SELECT EXISTS (SELECT 1 FROM catalog.recent_postings)").fetchone()
            if row is not None and not row[0]:
                break
            time.sleep(1.0)
        else:
            log(f"  warning: recent postings still waiting after {timeout_s:.0f} s")
    return time.perf_counter() - started


def postgres_version(database_url: str) -> str:
    import psycopg

    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"
    except Exception as exc:
        return f"? ({exc})"


# ---------------------------------------------------------------------- identify


DEFAULT_METHODS = (report.LANDMARKS, report.NEURAL, report.FUSED)


def identify_one(em: Any, query: Query, data: bytes, method: str) -> report.QueryRecord:
    """One Identify call with `method`; an RPC error becomes a record with no match."""
    import grpc

    try:
        result = em.identify(data, method=method)
    except grpc.RpcError as exc:
        return report.QueryRecord.answered(
            query, latency_ms=math.nan, error=f"{exc.code().name}: {exc.details()}", method=method
        )
    m = result.match
    return report.QueryRecord.answered(
        query,
        predicted_track=m.external_id if m else None,
        predicted_offset_s=m.offset_s if m else None,
        confidence=m.confidence if m else None,
        score=m.score if m else None,
        latency_ms=result.latency_ms,
        server_ms=result.server_ms or None,
        method=method,
        match_methods=tuple(m.methods) if m else (),
    )


def identify_all(
    em: Any,
    queries: Sequence[Query],
    methods: Sequence[str],
    progress_every: int = 500,
    clip_format: str = "wav",
) -> list[report.QueryRecord]:
    """Every query once per method; the methods take turns query by query, so a
    change of load on the machine affects them alike, and who goes first rotates,
    so no method always finds the query's postings already in PostgreSQL's cache."""
    records: list[report.QueryRecord] = []
    started = time.perf_counter()
    for i, q in enumerate(queries, 1):
        data = clip_bytes(q.audio, q.sr, clip_format)
        first = i % len(methods)
        records += [identify_one(em, q, data, m) for m in [*methods[first:], *methods[:first]]]
        if i % progress_every == 0 or i == len(queries):
            rate = i * len(methods) / (time.perf_counter() - started)
            log(f"  identified {i}/{len(queries)} queries x {len(methods)} methods "
                f"({rate:.1f} calls/s)")  # fmt: skip
    return records


def parse_methods(text: str) -> list[str]:
    from earmark.results import IDENTIFY_METHODS

    methods = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in methods if m not in IDENTIFY_METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(
            f"methods are a comma-separated subset of {', '.join(IDENTIFY_METHODS)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return methods


# ------------------------------------------------------------ server-side split


@dataclass
class SplitResult:
    n: int = 0
    # stage -> per-query milliseconds
    ms: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""

    def add(self, stage: str, value: float) -> None:
        self.ms.setdefault(stage, []).append(value)


SPLIT_STAGES = (
    ("client", "Identify round trip through the SDK (from step 3)"),
    ("fp_rpc", "fingerprint service: ExtractFingerprint(QUERY) called directly"),
    ("decode", "  in-process: WAV PCM -> float, resample to the fingerprinter's rate"),
    ("extract", "  in-process: extract_query_landmarks"),
    ("search", "search side in-process: identify() = lookup + vote + track rows"),
    ("lookup", "  Catalog.postings, every posting (identify reads a budget: see search side)"),
    ("vote", "  rank_matches over those postings (offset-consistency vote)"),
    ("server", "server-side estimate = fingerprint RPC + search side"),
)


async def _split_async(
    info: Any, queries: Sequence[Query], client_ms: dict[str, float]
) -> SplitResult:
    import grpc

    from earmark.v1 import common_pb2, fingerprint_pb2, fingerprint_pb2_grpc
    from earmark_fingerprint.landmarks import SAMPLE_RATE_HZ, extract_query_landmarks
    from earmark_runtime.audio import pcm16_to_float
    from earmark_runtime.db import open_pool
    from earmark_search.catalog import Catalog
    from earmark_search.identify import identify
    from earmark_search.matching import rank_matches

    out = SplitResult()
    pool = await open_pool(info.database_url, min_size=1, max_size=2)
    await pool.wait(timeout=30)
    catalog = Catalog(pool)
    channel = grpc.aio.insecure_channel(
        info.addr("fingerprint"),
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    stub = fingerprint_pb2_grpc.FingerprintServiceStub(channel)
    clock = time.perf_counter
    try:
        for q in queries:
            data = wav_bytes(q.audio, q.sr)
            t0 = clock()
            reply = await stub.ExtractFingerprint(
                fingerprint_pb2.ExtractFingerprintRequest(
                    audio=common_pb2.AudioInput(encoded=data),
                    purpose=fingerprint_pb2.EXTRACTION_PURPOSE_QUERY,
                ),
                timeout=30,
            )
            t1 = clock()
            pcm = data[44:]  # the canonical 44-byte header written by wav_bytes
            samples = pcm16_to_float(pcm, q.sr, 1, SAMPLE_RATE_HZ)
            t2 = clock()
            extract_query_landmarks(samples)
            t3 = clock()
            lm = reply.landmarks
            t4 = clock()
            await identify(catalog, lm, 1)
            t5 = clock()
            hashes = np.frombuffer(lm.hashes, dtype="<u4")
            times = np.frombuffer(lm.times, dtype="<u4").astype(np.int64)
            t6 = clock()
            p_hash, p_track, p_time = await catalog.postings(hashes)
            t7 = clock()
            if hashes.size:
                rank_matches(hashes, times, p_hash, p_track, p_time, max_matches=1)
            t8 = clock()
            out.n += 1
            out.add("fp_rpc", 1000 * (t1 - t0))
            out.add("decode", 1000 * (t2 - t1))
            out.add("extract", 1000 * (t3 - t2))
            out.add("search", 1000 * (t5 - t4))
            out.add("lookup", 1000 * (t7 - t6))
            out.add("vote", 1000 * (t8 - t7))
            out.add("server", 1000 * ((t1 - t0) + (t5 - t4)))
            if q.query_id in client_ms and not math.isnan(client_ms[q.query_id]):
                out.add("client", client_ms[q.query_id])
    finally:
        await channel.close()
        await pool.close()
    return out


def server_split(
    info: Any,
    queries: Sequence[Query],
    records: Sequence[report.QueryRecord],
    max_queries: int = 400,
) -> SplitResult:
    """Per-stage timings of the server's work for 5 s queries, run stage by stage.

    At most ``max_queries``, taken at an even stride so that every condition and
    both positives and negatives are represented.
    """
    sample = [q for q in queries if q.length_s == SPLIT_LENGTH_S]
    if not sample:
        return SplitResult(note=f"no {SPLIT_LENGTH_S:g} s queries in this run")
    if max_queries > 0 and len(sample) > max_queries:
        sample = sample[:: math.ceil(len(sample) / max_queries)]
    client_ms = {r.query_id: r.latency_ms for r in records}
    try:
        return asyncio.run(_split_async(info, sample, client_ms))
    except Exception as exc:
        return SplitResult(note=f"server-side split unavailable: {type(exc).__name__}: {exc}")


def split_table(split: SplitResult) -> str:
    rows = []
    for key, label in SPLIT_STAGES:
        vals = split.ms.get(key, [])
        if not vals:
            continue
        rows.append([
            label, report.ms(report.percentile(vals, 50)),
            report.ms(report.percentile(vals, 99)), report.ms(float(np.mean(vals))),
        ])  # fmt: skip
    return report.markdown_table(["stage (5 s clips)", "p50 ms", "p99 ms", "mean ms"], rows)


def reference_extraction_speed(
    tracks: Sequence[CorpusTrack], max_audio_s: float = 900.0
) -> tuple[float, float]:
    """(x real time, audio seconds) of `extract_landmarks` on catalog audio, CPU time.

    CPU time of this process, so the figure is per core even while the services
    idle in the background.
    """
    from earmark_fingerprint.landmarks import SAMPLE_RATE_HZ, extract_landmarks

    audio_s = cpu_s = 0.0
    for t in sorted(tracks, key=lambda t: t.duration_s):
        if audio_s >= max_audio_s:
            break
        if t.loop_period_s:
            continue
        x = decode_audio(t.path, SAMPLE_RATE_HZ)
        extract_landmarks(x[: SAMPLE_RATE_HZ * 2])  # warm-up
        c0 = time.process_time()
        extract_landmarks(x)
        cpu_s += time.process_time() - c0
        audio_s += x.size / SAMPLE_RATE_HZ
    return (audio_s / cpu_s if cpu_s else math.nan), audio_s


# ------------------------------------------------------------------------ facts


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def git_commit() -> str:
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return commit + (" + uncommitted changes" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return math.nan


def command_line(argv: Sequence[str]) -> str:
    text = "python -m bench.run " + shlex.join(argv)
    home = str(Path.home())
    return text.replace(home, "~")


# ------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS_DIR)
    ap.add_argument(
        "--home", type=Path, default=None, help="EARMARK_HOME (default: a fresh temporary one)"
    )
    ap.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-track", type=int, default=1, help="excerpts per track and length")
    ap.add_argument(
        "--limit",
        type=int,
        default=None,
        help="queries from at most N catalog tracks and N/4 held-out ones (all are ingested)",
    )
    ap.add_argument(
        "--lengths",
        type=lambda s: [float(x) for x in s.split(",")],
        default=list(DEFAULT_LENGTHS),
        help="comma-separated clip lengths in seconds (default 1,2,3,5,10)",
    )
    ap.add_argument(
        "--conditions",
        type=lambda s: s.split(","),
        default=None,
        help="comma-separated subset of: " + ",".join(c.name for c in default_conditions()),
    )
    ap.add_argument(
        "--methods",
        type=parse_methods,
        default=list(DEFAULT_METHODS),
        help="comma-separated identify methods, each query is identified once with each "
        "(default landmarks,neural,fused; auto also accepted)",
    )
    ap.add_argument(
        "--format",
        choices=CLIP_FORMATS,
        default="wav",
        help="container the query clips are uploaded in (default wav, parsed by the server; "
        "the others are decoded by its ffmpeg, lossy ones encoded at 128 kbps); the latency "
        "split always sends WAV",
    )
    ap.add_argument("--upload-workers", type=int, default=4)
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "earmark-bench",
        help="folder for records.jsonl and report.md (default: $TMPDIR/earmark-bench)",
    )
    ap.add_argument("--docs", type=Path, default=DOCS, help="markdown file the results go into")
    ap.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    ap.add_argument("--no-split", action="store_true", help="skip the server-side latency split")
    ap.add_argument(
        "--no-search-restart",
        action="store_true",
        help="identify with search as ingest left it (Milvus Lite then searches its unsealed "
        "in-memory rows, far slower)",
    )
    ap.add_argument(
        "--split-queries",
        type=int,
        default=400,
        help="5 s queries timed stage by stage (0: all of them)",
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    wall0 = time.perf_counter()
    # The code the services start with: other work may commit while the benchmark runs.
    commit = git_commit()
    phases: dict[str, float] = {}

    def phase(name: str, since: float) -> float:
        now = time.perf_counter()
        phases[name] = now - since
        return now

    tracks = list_corpus(args.corpus)
    if not tracks:
        log(f"no usable tracks under {args.corpus} (run `make corpus`)")
        return 1
    plan = BenchPlan.of(tracks, args.seed, args.limit, args.conditions)
    catalog, held_out = plan.catalog, plan.held_out
    q_catalog, q_held, conds = plan.query_catalog, plan.query_held_out, plan.conditions
    log(
        f"corpus: {len(tracks)} tracks, {sum(t.duration_s for t in tracks) / 3600:.2f} h -> "
        f"catalog {len(catalog)}, held-out {len(held_out)}; queries from {len(q_catalog)} "
        f"catalog + {len(q_held)} held-out tracks; {len(conds)} conditions x "
        f"{len(args.lengths)} lengths x {args.per_track}"
    )

    from earmark import Earmark
    from earmark_stack import IDENTIFY_SERVICES, down, up
    from earmark_stack import restart_service as restart

    temp_home = args.home is None
    home = Path(tempfile.mkdtemp(prefix="earmark-bench-")) if temp_home else args.home
    log(f"== starting a fresh embedded stack ({', '.join(IDENTIFY_SERVICES)}) under {home}")
    t = time.perf_counter()
    info = up(home, services=IDENTIFY_SERVICES, progress=lambda m: log("  " + m))
    t = phase("stack start", t)
    extraction_x = extraction_audio_s = math.nan
    split = SplitResult(note="skipped (--no-split)")
    try:
        with Earmark(ingest=info.addr("ingest"), search=info.addr("search"), timeout_s=120) as em:
            if any(True for _ in em.tracks()):
                log("warning: the catalog is not empty; index size and results include it")
            log(f"== ingesting {len(catalog)} catalog tracks ({args.upload_workers} uploads)")
            ingest = ingest_catalog(em, catalog, args.upload_workers)
            t = phase("ingest", t)
            waited = wait_for_compaction(info.database_url)
            log(f"  recent postings packed by search's compactor after {waited:.0f} s")
            t = phase("compaction", t)
            sizes = index_size(info.database_url)
            pg_version = postgres_version(info.database_url)
            for line in ingest.rejected:
                log(f"  REJECTED {line}")
            log(
                f"ingested {ingest.indexed}/{ingest.tracks} tracks, "
                f"{ingest.audio_s / 3600:.2f} h in {ingest.wall_s:.0f} s = "
                f"{ingest.x_realtime:.0f}x real time; index {sum(sizes.values()) / 1e6:.1f} MB"
            )
            if not args.no_search_restart:
                log(f"== restarting search: {SEARCH_RESTART_WHY}")
                restart(home, "search", timeout_s=120)
                t = phase("search restart", t)

            log("== building queries")
            queries = plan.queries(
                args.lengths, args.per_track, args.seed, progress=lambda m: log("  " + m)
            )
            t = phase("query build", t)
            n_pos = sum(not q.negative for q in queries)
            log(
                f"== identifying {len(queries)} queries ({n_pos} positive) with "
                + ", ".join(args.methods)
            )
            records = identify_all(em, queries, args.methods, clip_format=args.format)
            t = phase("identify", t)

        if not args.no_split:
            log(f"== server-side latency split on the {SPLIT_LENGTH_S:g} s queries")
            split_records = report.by_method(records).get(
                report.issue3_method(args.methods) or "", []
            )
            split = server_split(info, queries, split_records, args.split_queries)
            if split.note:
                log("  " + split.note)
            t = phase("latency split", t)
            log("== reference extraction speed (one core, CPU time)")
            try:
                extraction_x, extraction_audio_s = reference_extraction_speed(catalog)
            except Exception as exc:
                log(f"  unavailable: {type(exc).__name__}: {exc}")
            t = phase("extraction speed", t)
    finally:
        if args.keep:
            log(f"stack left running under {home} (`EARMARK_HOME={home} earmark down`)")
        else:
            down(home)
            if temp_home:
                shutil.rmtree(home, ignore_errors=True)
    wall_s = time.perf_counter() - wall0

    ctx = ReportContext(
        argv=argv,
        corpus_tracks=len(tracks),
        corpus_hours=sum(t.duration_s for t in tracks) / 3600,
        catalog_tracks=len(catalog),
        held_out_tracks=len(held_out),
        query_tracks=(len(q_catalog), len(q_held)),
        ingest=ingest,
        sizes=sizes,
        extraction_x=extraction_x,
        extraction_audio_s=extraction_audio_s,
        split=split,
        phases=phases,
        wall_s=wall_s,
        pg_version=pg_version,
        rubberband="rubberband" in ffmpeg_filters(),
        search_restarted=not args.no_search_restart,
        commit=commit,
        clip_format=args.format,
    )
    text = render(records, ctx)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "records.jsonl").open("w") as f:
        f.writelines(json.dumps(r.to_json()) + "\n" for r in records)
    (args.out / "report.md").write_text(text + "\n")
    log(f"wrote {args.out}/records.jsonl and report.md")
    if not args.no_docs:
        write_docs(args.docs, text)
        log(f"added the results to {args.docs}")
    return 0


# ------------------------------------------------------------------------ report


@dataclass
class ReportContext:
    argv: list[str]
    corpus_tracks: int
    corpus_hours: float
    catalog_tracks: int
    held_out_tracks: int
    query_tracks: tuple[int, int]
    ingest: IngestResult
    sizes: dict[str, int]
    extraction_x: float
    extraction_audio_s: float
    split: SplitResult
    phases: dict[str, float]
    wall_s: float
    pg_version: str
    rubberband: bool
    search_restarted: bool = False
    commit: str = ""  # at the start of the run; empty: read when rendering
    clip_format: str = "wav"


def render(records: Sequence[report.QueryRecord], ctx: ReportContext) -> str:
    records_by_method = report.by_method(records)
    methods = list(records_by_method)
    summaries = {m: report.summarize(recs) for m, recs in records_by_method.items()}
    # Issue 3's targets and the latency split are about one method: landmarks.
    main_method = report.issue3_method(methods) or report.LANDMARKS
    main = records_by_method.get(main_method, [])
    summary = summaries.get(main_method) or report.summarize([])
    hours = ctx.ingest.audio_s / 3600
    total_bytes = sum(ctx.sizes.values())
    mb_per_h = total_bytes / 1e6 / hours if hours else math.nan
    five = [r.latency_ms for r in main if r.length_s == SPLIT_LENGTH_S and r.error is None]
    server = ctx.split.ms.get("server", [])
    reported = [
        r.server_ms
        for r in main
        if r.length_s == SPLIT_LENGTH_S and r.server_ms is not None and r.error is None
    ]
    if reported:
        p50, p99 = report.percentile(reported, 50), report.percentile(reported, 99)
        lat_note = "reported by search"
    elif server:
        p50, p99 = report.percentile(server, 50), report.percentile(server, 99)
        lat_note = "server-side estimate, see the split"
    else:
        p50, p99 = report.percentile(five, 50), report.percentile(five, 99)
        lat_note = "client side, an upper bound"
    targets = report.target_rows(
        summary,
        index_mb_per_hour=mb_per_h,
        extraction_x_realtime=ctx.extraction_x,
        identify_p50_ms=p50,
        identify_p99_ms=p99,
        latency_note=lat_note,
    )
    n_queries = len(main)
    n_pos = sum(not r.negative for r in main)
    errors = {m: sum(r.error is not None for r in recs) for m, recs in records_by_method.items()}
    error_note = ", ".join(f"{n} {m}" for m, n in errors.items() if n)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in ctx.phases.items())
    several = len(methods) > 1
    out = [
        f"### {now}",
        "",
        f"- command: `{command_line(ctx.argv)}`",
        f"- commit: `{ctx.commit or git_commit()}` (at the start of the run)",
        f"- machine: {os.cpu_count()} CPUs ({cpu_model()}), {mem_gib():.0f} GiB RAM, "
        f"Python {platform.python_version()}, PostgreSQL {ctx.pg_version}, "
        f"{platform.system()} {platform.release()}; services (ingest, fingerprint, search), "
        "PostgreSQL, NATS, Milvus Lite and the benchmark client all on this machine",
        f"- corpus: {ctx.corpus_tracks} tracks, {ctx.corpus_hours:.2f} h; catalog "
        f"{ctx.catalog_tracks} tracks ({hours:.2f} h indexed), held out {ctx.held_out_tracks}; "
        f"queries from {ctx.query_tracks[0]} catalog and {ctx.query_tracks[1]} held-out tracks",
        f"- queries: {n_queries} ({n_pos} positive, {n_queries - n_pos} negative)"
        + (f", RPC errors (counted as no match): {error_note}" if error_note else "")
        + f"; pitch/tempo by {'rubberband' if ctx.rubberband else 'asetrate/atempo'}"
        + f"; clips uploaded as {ctx.clip_format}",
        f"- identify methods: {', '.join(methods)}, every query once with each "
        f"(column tags: {report.method_legend(methods)})"
        if several
        else f"- identify method: {', '.join(methods)}",
        "- search restarted between ingest and identify: " + SEARCH_RESTART_WHY
        if ctx.search_restarted
        else "- search not restarted after ingest (--no-search-restart): neural searches "
        "scan Milvus Lite's unsealed rows",
        f"- wall time: {ctx.wall_s / 60:.1f} min ({phases})",
        "",
        f"#### Targets (issue 3), {main_method} method",
        "",
        report.targets_table(targets),
        "",
    ]
    if several:
        out += [
            "#### Targets (issue 4), the methods on the same queries",
            "",
            report.targets_table(report.method_target_rows(summaries)),
            "",
            "#### Top-1 hit rate, % (right track), per method",
            "",
            report.method_hit_table(summaries),
            "",
            "#### Offset accuracy, % (right track and offset within 0.5 s, speed-corrected), "
            "per method",
            "",
            report.method_offset_table(summaries),
            "",
            "#### Misses of positive queries, per method",
            "",
            report.method_errors_table(summaries),
            "",
            "#### False positives on held-out (out-of-catalog) clips, per method",
            "",
            report.method_negatives_table(summaries),
            "",
            "#### Which identifiers found the top match (Match.methods)",
            "",
            report.provenance_table(records_by_method),
            "",
            "#### Identify latency, client side (SDK over loopback, one call at a time)",
            "",
            report.method_latency_table(records_by_method),
            "",
        ]
        if any(r.server_ms is not None for r in records):
            out += [
                "#### Identify latency, server side (as reported by search)",
                "",
                report.method_latency_table(records_by_method, server=True),
                "",
            ]
    else:
        out += [
            "#### Top-1 hit rate, % (right track)",
            "",
            report.hit_table(summary),
            "",
            "#### Offset accuracy, % (right track and offset within 0.5 s, speed-corrected)",
            "",
            report.offset_table(summary),
            "",
            *report.misses_and_false_positives(summary),
            "",
            "#### Identify latency, client side (SDK over loopback, one query at a time)",
            "",
            report.latency_table(main),
            "",
        ]
        if reported:
            out += [
                "#### Identify latency, server side (as reported by search)",
                "",
                report.latency_table(main, server=True),
                "",
            ]
    if reported:
        out += [
            f"#### Identify latency by condition, {SPLIT_LENGTH_S:g} s clips, server side "
            f"({main_method} method)",
            "",
            report.condition_latency_table(main, SPLIT_LENGTH_S),
            "",
        ]
    out += [
        f"#### Server-side split, {SPLIT_LENGTH_S:g} s clips ({ctx.split.n} queries, "
        f"{main_method} method)",
        "",
    ]
    if ctx.split.ms:
        out += [split_table(ctx.split), ""]
    if ctx.split.note:
        out += [ctx.split.note, ""]
    size_rows = [
        [name, f"{size / 1e6:.1f}", f"{size / 1e6 / hours:.2f}" if hours else "-"]
        for name, size in ctx.sizes.items()
    ]
    size_rows.append(["total", f"{total_bytes / 1e6:.1f}", f"{mb_per_h:.2f}"])
    ingest_rows = [
        ["tracks indexed", f"{ctx.ingest.indexed}/{ctx.ingest.tracks}"],
        ["audio indexed", f"{hours:.2f} h"],
        ["wall time, first upload to last INDEXED", f"{ctx.ingest.wall_s:.0f} s"],
        ["ingest speed, end to end", f"{ctx.ingest.x_realtime:.0f}x real time"],
        [
            "reference extraction, one core (CPU time)",
            f"{ctx.extraction_x:.0f}x real time on {ctx.extraction_audio_s / 60:.0f} min of audio"
            if not math.isnan(ctx.extraction_x)
            else "not measured",
        ],
    ]
    out += [
        "#### Ingest and index",
        "",
        report.markdown_table(["measure", "value"], ingest_rows),
        "",
        report.markdown_table(["catalog table (heap + TOAST + indexes)", "MB", "MB per hour"],
                              size_rows),
    ]  # fmt: skip
    if ctx.sizes.get("recent_postings", 0) > UNPACKED_NOTE_BYTES:
        out += [
            "",
            "Measured before search's compactor had packed the ingest's postings (the wait "
            "timed out): `recent_postings` still holds them, so this total overstates the "
            "packed index.",
        ]
    if ctx.ingest.rejected:
        out += ["", "Rejected at ingest: " + "; ".join(ctx.ingest.rejected)]
    return "\n".join(out)


def write_docs(path: Path, section: str) -> None:
    """Insert ``section`` after the results marker (newest first), creating the file if needed."""
    if path.exists():
        text = path.read_text()
    else:
        text = f"# Benchmarks\n\nResults of `make bench`.\n\n{RESULTS_MARKER}\n"
    if RESULTS_MARKER in text:
        head, tail = text.split(RESULTS_MARKER, 1)
        text = f"{head}{RESULTS_MARKER}\n\n{section}\n{tail}"
    else:
        text = text.rstrip("\n") + f"\n\n{RESULTS_MARKER}\n\n{section}\n"
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
