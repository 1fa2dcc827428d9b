"""Load: identify of 5 s clips at rising concurrency against a catalog of at least
100 hours, optionally while a bulk ingest runs. Prints per concurrency level the
throughput, client-side p50/p99 latency, errors by status (RESOURCE_EXHAUSTED,
the backpressure refusal, on its own), and where the server's time went.

The catalog: a few real tracks uploaded through ingest (the ones queried), plus
synthetic distractor tracks up to --hours, written straight into the search
catalog through Catalog.index_track (the indexer's own binary-COPY path) from
landmarks of generated music (random tuning, scale, tempo and timbre per track).
Uploading 100 h through ingest would only measure ingest.

Run (starts an embedded stack under --home and keeps it, so a second run reuses
the catalog; `earmark down` with EARMARK_HOME=--home stops it):

    .venv/bin/python -m bench.load --home /tmp/earmark-load --hours 100
    .venv/bin/python -m bench.load --home /tmp/earmark-load --hours 100 --with-ingest
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import psycopg

from bench.synthetic import song, wav_bytes
from earmark._table import table
from earmark.aio import AsyncEarmark
from earmark.v1 import common_pb2, events_pb2, search_pb2, search_pb2_grpc
from earmark_fingerprint.extraction import to_proto
from earmark_fingerprint.landmarks import SAMPLE_RATE_HZ, extract_landmarks
from earmark_runtime.config import load_settings
from earmark_runtime.db import open_pool
from earmark_search.catalog import Catalog
from earmark_search.compaction import CompactionPolicy
from earmark_stack import StackInfo, read_info, restart_service, up

CLIP_S = 5.0
QUERY_RATE_HZ = 22050
QUERY_TRACK_S = 60.0
RETRY_AFTER_KEY = "retry-after-ms"


def distractor_audio(seed: int, seconds: float, rate: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Generated music, vectorised: notes of a random scale in a random tuning, with a
    timbre and a drum pattern of its own, so that tracks spread over the hash space."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    base_hz = rng.uniform(90.0, 180.0)
    scale = rng.choice(np.arange(36), size=int(rng.integers(7, 15)), replace=False)
    lengths = (rng.uniform(0.1, 0.5, size=int(seconds / 0.1) + 2) * rate).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    count = int(np.searchsorted(starts, n))
    note = np.repeat(np.arange(count), lengths[:count])[:n]
    t = ((np.arange(n) - starts[note]) / rate).astype(np.float32)
    freqs = (base_hz * 2 ** (rng.choice(scale, size=count) / 12)).astype(np.float32)
    decay = rng.uniform(2.0, 8.0, size=count).astype(np.float32)
    phase = np.float32(2 * np.pi) * freqs[note] * t
    weights = rng.uniform(0.2, 1.0, size=4) / np.arange(1, 5)
    out = np.zeros(n, dtype=np.float32)
    for k, w in enumerate(weights, start=1):
        out += np.float32(w) * np.sin(k * phase)
    out *= np.exp(-t * decay[note])
    beat = int(rng.uniform(0.35, 0.6) * rate)
    since_hit = np.arange(n) % beat
    drum = np.where(since_hit < rate // 20, np.exp(-since_hit / 300.0), 0.0).astype(np.float32)
    out += np.float32(0.3) * rng.standard_normal(n, dtype=np.float32) * drum
    return out / np.float32(np.abs(out).max() * 1.1)


def distractor_fingerprint(seed: int, seconds: float) -> bytes:
    """A serialized FingerprintExtracted of one distractor (runs in a worker process)."""
    landmarks = extract_landmarks(distractor_audio(seed, seconds))
    track_id = str(uuid.UUID(int=seed, version=4))
    event = events_pb2.FingerprintExtracted(
        submission=events_pb2.SubmissionReceived(
            submission_id=track_id,
            external_id=f"distractor-{seed}",
            blob_key=f"distractors/{seed}",
            source_sha256=f"{seed:064x}",
            source_format="generated",
            metadata=common_pb2.TrackMetadata(title=f"Distractor {seed}", artist="bench.load"),
            duration_s=seconds,
        ),
        landmarks=to_proto(landmarks),
    )
    return bytes(event.SerializeToString())


def catalog_size(database_url: str) -> tuple[float, int, int]:
    """(hours, tracks, postings) in the catalog."""
    with psycopg.connect(database_url) as conn:
        hours, tracks = conn.execute(
            "SELECT coalesce(sum(duration_s), 0) / 3600, count(*) FROM catalog.tracks"
        ).fetchone() or (0.0, 0)
        postings = conn.execute(
            "SELECT coalesce(sum(landmark_count), 0) FROM catalog.tracks"
        ).fetchone()
    return float(hours), int(tracks), int(postings[0] if postings else 0)


async def fill_catalog(database_url: str, hours: float, track_s: float, workers: int) -> int:
    """Add distractors until the catalog holds `hours`; the number added."""
    have_hours, tracks, _ = catalog_size(database_url)
    missing = max(0, int(np.ceil((hours - have_hours) * 3600 / track_s)))
    if not missing:
        return 0
    first_seed = 1_000_000 + tracks
    print(f"adding {missing} distractors of {track_s:.0f} s ({missing * track_s / 3600:.1f} h)")
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    seeds = range(first_seed, first_seed + missing)
    # The search service's own policy decides when to pack, as if it had indexed them.
    policy = CompactionPolicy(rows=load_settings("search").compact_rows, idle_s=math.inf)
    recent, total = 0, catalog_size(database_url)[2]
    pool = await open_pool(database_url, min_size=1, max_size=2)
    try:
        catalog = Catalog(pool)
        with ProcessPoolExecutor(max_workers=workers) as executor:
            # A bounded window of tracks being made while finished ones are written.
            window = workers * 2
            pending = [
                loop.run_in_executor(executor, distractor_fingerprint, seed, track_s)
                for seed in seeds[:window]
            ]
            for done, seed in enumerate([*seeds[window:], *([None] * window)], start=1):
                event = events_pb2.FingerprintExtracted.FromString(await pending.pop(0))
                if seed is not None:
                    pending.append(
                        loop.run_in_executor(executor, distractor_fingerprint, seed, track_s)
                    )
                await catalog.index_track(event)
                written = len(event.landmarks.hashes) // 4
                recent, total = recent + written, total + written
                if policy.due(recent, total, idle_s=0.0):
                    await catalog.compact()
                    recent = 0
                if done % 50 == 0 or done == missing:
                    elapsed = time.perf_counter() - started
                    print(
                        f"  {done}/{missing} distractors, "
                        f"{done * track_s / 3600 / elapsed * 60:.1f} h of audio per minute",
                        flush=True,
                    )
        await catalog.compact()
    finally:
        await pool.close()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE catalog.recent_postings")
        conn.execute("VACUUM ANALYZE catalog.packed_postings")
        conn.execute("ANALYZE catalog.tracks")
    return missing


async def upload_queried_tracks(stack: StackInfo, count: int) -> list[tuple[str, np.ndarray]]:
    """(track id, audio) of the real tracks the clips come from, uploaded if missing."""
    audio = {seed: song(seed, seconds=QUERY_TRACK_S) for seed in range(5000, 5000 + count)}
    async with AsyncEarmark(ingest=stack.addr("ingest"), search=stack.addr("search")) as em:
        subs = [
            await em.upload(wav_bytes(a), external_id=f"load-query-{seed}")
            for seed, a in audio.items()
        ]
        final = await em.wait([s.submission_id for s in subs], timeout_s=600)
    assert all(s.state == "INDEXED" for s in final), [s.state for s in final]
    return [(s.track_id, a) for s, a in zip(final, audio.values(), strict=True)]


def clips(tracks: list[tuple[str, np.ndarray]], n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """`n` 5 s WAV clips at random offsets: what most clients send (decoded in-process)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        track_id, audio = tracks[i % len(tracks)]
        start = int(rng.uniform(0, QUERY_TRACK_S - CLIP_S) * QUERY_RATE_HZ)
        out.append((track_id, wav_bytes(audio[start : start + int(CLIP_S * QUERY_RATE_HZ)])))
    return out


@dataclass
class LevelResult:
    concurrency: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    wrong: int = 0
    server_ms: dict[str, list[float]] = field(
        default_factory=lambda: {"extract": [], "lookup": [], "match": [], "total": []}
    )

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)


async def run_level(
    channel: grpc.aio.Channel, queries: list[tuple[str, bytes]], concurrency: int, seconds: float
) -> LevelResult:
    """`concurrency` callers identify back to back for `seconds` (closed loop); a
    refused caller waits the server's retry advice before its next call."""
    stub = search_pb2_grpc.SearchServiceStub(channel)
    result = LevelResult(concurrency)
    deadline = time.perf_counter() + seconds

    async def caller(k: int) -> None:
        n = k
        while time.perf_counter() < deadline:
            expected, clip = queries[n % len(queries)]
            n += concurrency
            request = search_pb2.IdentifyRequest(audio=common_pb2.AudioInput(encoded=clip))
            started = time.perf_counter()
            try:
                reply = await stub.Identify(request, timeout=30)
            except grpc.aio.AioRpcError as err:
                result.statuses[err.code().name] += 1
                advice = dict(err.trailing_metadata() or ()).get(RETRY_AFTER_KEY)
                if advice is not None:
                    await asyncio.sleep(int(advice) / 1000)
                continue
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            result.statuses["OK"] += 1
            if not reply.matches or reply.matches[0].track.track_id != expected:
                result.wrong += 1
            timings = reply.timings
            for name, value in (
                ("extract", timings.extract_ms),
                ("lookup", timings.lookup_ms),
                ("match", timings.match_ms),
                ("total", timings.total_ms),
            ):
                result.server_ms[name].append(value)

    started = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


async def ingest_forever(stack: StackInfo, stop: asyncio.Event, done: list[float]) -> None:
    """A bulk ingest alongside: 30 s songs uploaded two at a time until `stop`."""
    async with AsyncEarmark(ingest=stack.addr("ingest"), search=stack.addr("search")) as em:
        seed = 900_000 + int(time.time()) % 100_000 * 10

        async def one_uploader(offset: int) -> None:
            n = offset
            while not stop.is_set():
                data = wav_bytes(song(seed + n, seconds=30.0))
                n += 2
                try:
                    await em.upload(data, external_id=f"load-ingest-{seed + n}")
                    done.append(30.0)
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.2)

        await asyncio.gather(one_uploader(0), one_uploader(1))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report(results: list[LevelResult], title: str) -> None:
    print(f"\n{title}")
    rows = []
    for r in results:
        errors = {k: v for k, v in r.statuses.items() if k not in ("OK", "RESOURCE_EXHAUSTED")}
        rows.append(
            (
                r.concurrency,
                f"{r.ok / r.seconds:.1f}",
                f"{percentile(r.latencies_ms, 50):.0f}",
                f"{percentile(r.latencies_ms, 99):.0f}",
                r.ok,
                r.statuses.get("RESOURCE_EXHAUSTED", 0),
                ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "0",
                r.wrong,
            )
        )
    table(
        ["callers", "identify/s", "p50 ms", "p99 ms", "ok", "RESOURCE_EXHAUSTED", "errors",
         "wrong match"],
        rows,
    )  # fmt: skip
    print("\nserver time per identify (mean ms, from IdentifyResponse.timings)")
    table(
        ["callers", "extract (fingerprint RPC)", "postings lookup", "match", "search total"],
        [
            (r.concurrency, *(f"{statistics.fmean(v or [float('nan')]):.1f}" for v in
                              (r.server_ms[k] for k in ("extract", "lookup", "match", "total"))))
            for r in results
        ],
    )  # fmt: skip


def set_search_limit(home: Path, max_inflight: int) -> StackInfo:
    """Restart search of a running stack with EARMARK_MAX_INFLIGHT = `max_inflight`."""
    path = home / "stack.json"
    state = json.loads(path.read_text())
    if state["extra_env"].get("EARMARK_MAX_INFLIGHT") != str(max_inflight):
        state["extra_env"]["EARMARK_MAX_INFLIGHT"] = str(max_inflight)
        path.write_text(json.dumps(state, indent=2))
        print(f"restarting search with EARMARK_MAX_INFLIGHT={max_inflight}")
        restart_service(home, "search", timeout_s=180)
    info = read_info(home)
    assert info is not None
    return info


async def main_async(args: argparse.Namespace, home: Path) -> int:
    info = read_info(home)
    if info is None:
        env = {"EARMARK_REQUIRED_TAGS": "", "EARMARK_MAX_INFLIGHT": str(args.max_inflight)}
        print(f"starting the embedded stack under {home}")
        info = up(home, extra_env=env, timeout_s=180)
    else:
        info = set_search_limit(home, args.max_inflight)
    added = await fill_catalog(info.database_url, args.hours, args.track_s, args.workers)
    queried = await upload_queried_tracks(info, args.query_tracks)
    hours, tracks, postings = catalog_size(info.database_url)
    print(f"catalog: {hours:.1f} h, {tracks} tracks, {postings / 1e6:.1f} M postings (+{added})")
    queries = clips(queried, 64)
    levels = [int(x) for x in args.levels.split(",")]
    stop = asyncio.Event()
    ingested: list[float] = []
    ingest_task = (
        asyncio.create_task(ingest_forever(info, stop, ingested)) if args.with_ingest else None
    )
    results = []
    async with grpc.aio.insecure_channel(info.addr("search")) as channel:
        await run_level(channel, queries, 2, 3.0)  # warm-up: connections, caches
        for level in levels:
            result = await run_level(channel, queries, level, args.seconds)
            results.append(result)
            print(f"  {level} callers: {result.ok / result.seconds:.1f}/s", flush=True)
    stop.set()
    if ingest_task is not None:
        await ingest_task
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    title = (
        f"identify of {CLIP_S:.0f} s WAV clips, {args.seconds:.0f} s per level, catalog "
        f"{hours:.1f} h / {tracks} tracks / {postings / 1e6:.1f} M postings, "
        f"EARMARK_MAX_INFLIGHT={args.max_inflight}, "
        f"{'with' if args.with_ingest else 'no'} ingest alongside, {machine}"
    )
    report(results, title)
    if args.with_ingest:
        print(f"\ningest alongside: {len(ingested)} uploads of 30 s accepted during the run")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--home", default="/tmp/earmark-load", help="EARMARK_HOME of the stack")
    ap.add_argument("--hours", type=float, default=100.0, help="catalog size to reach")
    ap.add_argument("--track-s", type=float, default=240.0, help="length of a distractor")
    ap.add_argument("--workers", type=int, default=2, help="processes making distractors")
    ap.add_argument("--query-tracks", type=int, default=8, help="real tracks the clips come from")
    ap.add_argument("--levels", default="1,2,4,8,16,32,64")
    ap.add_argument("--seconds", type=float, default=15.0, help="duration of each level")
    ap.add_argument(
        "--max-inflight", type=int, default=64, help="EARMARK_MAX_INFLIGHT of search (restarts it)"
    )
    ap.add_argument("--with-ingest", action="store_true", help="a bulk ingest runs meanwhile")
    args = ap.parse_args()
    return asyncio.run(main_async(args, Path(args.home).expanduser()))


if __name__ == "__main__":
    raise SystemExit(main())
