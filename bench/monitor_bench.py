"""Live monitoring benchmark: a generated radio show through `Monitor`.

Usage::

    python -m bench.monitor_bench                        # corpus (or synthetic) catalog, real stack
    python -m bench.monitor_bench --offline              # same pipeline in-process, no servers
    python -m bench.monitor_bench --streams 10,25,50 --stream-s 90

The show (8 kHz) strings together excerpts of catalog tracks (30-60 s from a
random point), out-of-catalog music, speech (espeak-ng when installed, else a
formant synthesiser), pink noise and jingles, joined by gaps, hard cuts, 3 s
crossfades and a DJ talking over a track's first seconds. The truth for each
catalog excerpt is where it starts (after a gap or cut its first sample; in a
crossfade the midpoint, where it becomes the louder one) and its offset.

1. Accuracy and delay: the show goes through Monitor as fast as the server
   takes it (simulated clock: delay = the event's stream_time_s, the audio
   received when it was decided, minus the true start) under three
   conditions: clean, MP3 64 kbit/s, pink noise at 15 dB SNR. Per catalog
   excerpt: detected or not, start error, delay, how many plays it became;
   every STARTED that matches no excerpt is a false event.
2. Load (not with --offline): N streams of the show at once, each paced in
   real time from its own point of the show, from one asyncio client. For each
   N: how far the analysis fell behind real time (wall seconds since the
   stream began minus the event's stream_time_s, at every event, plus any
   delay in sending), the wall-clock detection delay, and the CPU seconds the
   fingerprint, search and PostgreSQL processes used per second of stream.

With --offline the same LiveLandmarks/StreamTracker code runs in-process on
an in-memory index (accuracy only, plus the pipeline's own CPU cost).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import resample_poly

from bench import corpus
from bench.music_check_data import SR, mock, synthetic_song, track_audio

CHUNK_S = 0.5
JOINS = ("gap", "cut", "crossfade", "talkover")
TARGET_RMS_DB = -20.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- show


@dataclass(frozen=True)
class Source:
    """A catalog (or held-out) recording at 8 kHz."""

    key: str
    title: str
    audio: np.ndarray
    path: Path | None = None


@dataclass(frozen=True)
class TruePlay:
    key: str
    start_s: float
    end_s: float
    offset_s: float  # track position at start_s
    join: str  # how it began: gap, cut, crossfade, talkover


@dataclass
class Show:
    audio: np.ndarray
    plays: list[TruePlay] = field(default_factory=list)
    # (kind, start, end) of everything else: music, speech, noise, jingle
    others: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.audio.size / SR


def _level(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) or 1.0
    gain = 10 ** ((TARGET_RMS_DB + rng.uniform(-3, 3)) / 20) / rms
    return np.clip(x * gain, -1, 1).astype(np.float32)


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    f[0] = f[1]
    return np.fft.irfft(spec / np.sqrt(f), n).astype(np.float32)


def jingle(rng: np.random.Generator) -> np.ndarray:
    """A station ident: a rising arpeggio over a sweep, 3-5 s."""
    seconds = rng.uniform(3, 5)
    t = np.arange(int(seconds * SR)) / SR
    base = 220 * 2 ** (rng.integers(0, 12) / 12)
    out = 0.3 * np.sin(2 * np.pi * (300 + 600 * t / seconds) * t)
    for n, step in enumerate([0, 4, 7, 12, 16]):
        on = (t >= n * seconds / 6) & (t < (n + 2) * seconds / 6)
        out += on * np.sin(2 * np.pi * base * 2 ** (step / 12) * t) * np.exp(-3 * (t % 0.5))
    return out.astype(np.float32)


def build_show(
    catalog: Sequence[Source], strangers: Sequence[Source], seed: int = 7, plays: int = 12
) -> Show:
    """Catalog excerpts with interludes and every kind of join (see the module docstring)."""
    rng = np.random.default_rng(seed)
    show = Show(audio=np.zeros(int(2 * SR), dtype=np.float32))
    joins = JOINS
    picks = rng.permutation(len(catalog))[:plays]
    for n, index in enumerate(picks):
        interlude = ["music", "speech", "jingle", "noise", "none"][n % 5]
        if interlude != "none":
            if interlude == "music":
                other = strangers[n % len(strangers)].audio
                length = int(rng.uniform(20, 35) * SR)
                start = int(rng.uniform(0, max(1, other.size - length)))
                piece = other[start : start + length]
            elif interlude == "speech":
                piece = mock("speech", 100 + n, float(rng.uniform(8, 18)))
            elif interlude == "jingle":
                piece = jingle(rng)
            else:
                piece = 0.3 * _pink(int(rng.uniform(4, 6) * SR), rng)
            begin = show.audio.size / SR
            show.audio = np.concatenate([show.audio, _level(piece, rng)])
            show.others.append((interlude, begin, show.audio.size / SR))
        source = catalog[int(index)]
        length_s = rng.uniform(30, 60)
        offset_s = rng.uniform(0, max(0.0, source.audio.size / SR - length_s - 1))
        piece = source.audio[int(offset_s * SR) : int((offset_s + length_s) * SR)]
        piece = _level(piece, rng)
        join = joins[n % len(joins)]
        if join == "gap":
            show.audio = np.concatenate([show.audio, np.zeros(int(rng.uniform(0.5, 2) * SR))])
        if join == "crossfade":
            fade = int(3 * SR)
            ramp = np.linspace(0, 1, fade, dtype=np.float32)
            start_s = (show.audio.size - fade / 2) / SR
            origin = show.audio.size - fade
            mixed = show.audio[origin:] * ramp[::-1] + piece[:fade] * ramp
            show.audio = np.concatenate([show.audio[:origin], mixed, piece[fade:]])
            offset_at_start = offset_s + fade / 2 / SR
        else:
            start_s = show.audio.size / SR
            if join == "talkover":
                voice = _level(mock("speech", 500 + n, 6.0), rng) * 0.7
                piece = piece.copy()
                piece[: voice.size] += voice
            show.audio = np.concatenate([show.audio, piece])
            offset_at_start = offset_s
        show.plays.append(
            TruePlay(source.key, start_s, show.audio.size / SR, offset_at_start, join)
        )
    show.audio = np.concatenate([show.audio, np.zeros(int(3 * SR), dtype=np.float32)])
    return show


def degrade(audio: np.ndarray, condition: str) -> np.ndarray:
    if condition == "clean":
        return audio
    if condition == "mp3-64k":
        from bench.synthetic import encode

        up = resample_poly(audio, 441, 160).astype(np.float32)
        data = encode(up, "mp3", sample_rate=22050, bitrate="64k")
        path = Path(tempfile.mkstemp(suffix=".mp3")[1])
        try:
            path.write_bytes(data)
            return corpus.decode_audio(path, sr=SR)
        finally:
            path.unlink()
    if condition == "pink-15db":
        noise = _pink(audio.size, np.random.default_rng(3))
        power = float(np.mean(audio.astype(np.float64) ** 2))
        noise *= np.sqrt(power / 10**1.5 / float(np.mean(noise.astype(np.float64) ** 2)))
        return np.clip(audio + noise, -1, 1).astype(np.float32)
    raise ValueError(f"unknown condition {condition}")


# ----------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Event:
    type: str
    key: str  # the catalog source, "" for UNKNOWN
    start_s: float
    end_s: float
    offset_s: float
    decided_s: float  # stream time (or, under load, wall seconds since the stream began)


@dataclass
class Score:
    plays: int = 0
    detected: int = 0
    start_errors: list[float] = field(default_factory=list)
    offset_errors: list[float] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    fragmented: int = 0  # excerpts reported as more than one play
    false_events: list[Event] = field(default_factory=list)
    missed: list[TruePlay] = field(default_factory=list)
    delay_by_join: dict[str, list[float]] = field(default_factory=dict)


def score(show: Show, events: Sequence[Event], *, tolerance_s: float = 3.0) -> Score:
    result = Score(plays=len(show.plays))
    started = [e for e in events if e.type == "STARTED"]
    used: set[int] = set()
    for truth in show.plays:
        mine = [
            (i, e)
            for i, e in enumerate(started)
            if e.key == truth.key and truth.start_s - tolerance_s <= e.start_s < truth.end_s
        ]
        if not mine:
            result.missed.append(truth)
            continue
        used.update(i for i, _ in mine)
        first = mine[0][1]
        result.detected += 1
        result.start_errors.append(first.start_s - truth.start_s)
        result.offset_errors.append(
            first.offset_s - (truth.offset_s + first.start_s - truth.start_s)
        )
        delay = first.decided_s - truth.start_s
        result.delays.append(delay)
        result.delay_by_join.setdefault(truth.join, []).append(delay)
        result.fragmented += len(mine) > 1
    result.false_events = [e for i, e in enumerate(started) if i not in used]
    return result


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def score_rows(name: str, s: Score) -> list[str]:
    abs_err = [abs(x) for x in s.start_errors]
    return [
        f"| {name} | {s.detected}/{s.plays}"
        f" | {_pct(abs_err, 50):.2f} / {max(abs_err, default=0):.2f}"
        f" | {sum(e <= 2.0 for e in abs_err)}/{s.plays}"
        f" | {sum(abs(e) <= 0.5 for e in s.offset_errors)}/{s.plays}"
        f" | {_pct(s.delays, 50):.1f}"
        f" | {_pct(s.delays, 95):.1f} | {max(s.delays, default=float('nan')):.1f}"
        f" | {s.fragmented} | {len(s.false_events)} |"
    ]


SCORE_HEADER = [
    "| condition | detected | start error p50 / max (s) | start within 2 s"
    " | offset in track within 0.5 s | delay p50 (s) | delay p95 (s) | delay max (s)"
    " | split plays | false events |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


# ------------------------------------------------------------------ the catalog


def load_sources(
    corpus_dir: Path, catalog_size: int, strangers: int
) -> tuple[list[Source], list[Source]]:
    """(catalog, out-of-catalog music): corpus tracks if present, else synthetic songs."""
    try:
        tracks = [t for t in corpus.list_corpus(corpus_dir) if t.loop_period_s is None]
    except FileNotFoundError:
        tracks = []
    if len(tracks) < catalog_size + strangers:
        log(f"no corpus at {corpus_dir}: synthetic songs instead")
        songs = [
            Source(f"synthetic-{s}", f"Synthetic {s}", synthetic_song(s, 90.0))
            for s in range(catalog_size + strangers)
        ]
        return songs[:catalog_size], songs[catalog_size:]
    rng = np.random.default_rng(11)
    chosen = [tracks[i] for i in rng.permutation(len(tracks))[: catalog_size + strangers]]
    with ThreadPoolExecutor(max_workers=2) as pool:
        audio = list(pool.map(track_audio, chosen))
    sources = [
        Source(t.track_id, Path(t.track_id).stem, a, t.path)
        for t, a in zip(chosen, audio, strict=True)
    ]
    return sources[:catalog_size], sources[catalog_size:]


# ------------------------------------------------------------------- offline mode


class MemoryCatalog:
    def __init__(self, sources: Sequence[Source]) -> None:
        from earmark_fingerprint.landmarks import extract_landmarks

        rows = []
        self.keys = [s.key for s in sources]
        for n, s in enumerate(sources, start=1):
            lm = extract_landmarks(s.audio)
            rows.append((lm.hashes.astype(np.int64), np.full(lm.hashes.size, n), lm.times))
        ph, pk, pt = (np.concatenate(c) for c in zip(*rows, strict=True))
        order = np.argsort(ph, kind="stable")
        self._h, self._k, self._t = ph[order], pk[order], pt[order].astype(np.int64)

    def postings(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        unique = np.unique(hashes.astype(np.int64))
        lo = np.searchsorted(self._h, unique)
        hi = np.searchsorted(self._h, unique, side="right")
        counts = hi - lo
        idx = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
        return self._h[idx].astype(np.uint32), self._k[idx], self._t[idx]


def run_offline(
    audio: np.ndarray,
    catalog: MemoryCatalog,
    *,
    use_tail: bool = True,
    single_grid: bool = False,
    hop_s: float = 1.0,
) -> tuple[list[Event], float]:
    """Events of one stream through the in-process pipeline, and its CPU seconds."""
    from earmark_fingerprint.landmarks import extract_landmarks, extract_query_landmarks
    from earmark_search.live_landmarks import FRAME_RATE_HZ, LiveLandmarks
    from earmark_search.monitoring import StreamTracker

    live = LiveLandmarks(hop_s)
    tracker = StreamTracker(FRAME_RATE_HZ)
    events: list[Event] = []
    cpu = time.process_time()

    def emit(decided: Sequence[Any]) -> None:
        for e in decided:
            key = catalog.keys[e.track_key - 1] if e.track_key else ""
            events.append(
                Event(
                    e.kind.value,
                    key,
                    e.start_frame / FRAME_RATE_HZ,
                    e.end_frame / FRAME_RATE_HZ,
                    (e.start_frame + e.alignment) / FRAME_RATE_HZ,
                    live.seconds,
                )
            )

    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    step = int(CHUNK_S * SR)
    for start in range(0, pcm.size + step, step):
        last = start >= pcm.size
        if not last:
            live.push(pcm[start : start + step])
        window = live.window(flush=True) if last else (live.window() if live.ready() else None)
        if window is None:
            continue
        extract = extract_landmarks if single_grid else extract_query_landmarks
        lm = extract(window.samples.astype(np.float32) / 32768)
        hop = live.accept(window, lm.hashes, lm.times)
        postings = catalog.postings(np.concatenate([hop.hashes, hop.tail_hashes]))
        emit(
            tracker.update(
                hop.hashes,
                hop.times,
                postings,
                live.settled_frame,
                hop.tail_hashes if use_tail else (),
                hop.tail_times if use_tail else (),
            )
        )
    emit(tracker.finish())
    return events, time.process_time() - cpu


# ---------------------------------------------------------------------- stack mode


def ingest(em: Any, sources: Sequence[Source]) -> dict[str, str]:
    """Upload the catalog; track_id -> source key for the INDEXED ones."""
    from bench.synthetic import wav_bytes

    def upload(s: Source) -> tuple[str, str]:
        data = s.path.read_bytes() if s.path else wav_bytes(s.audio, sample_rate=SR)
        meta = {"title": s.title, "artist": "bench"}
        return em.upload(data, external_id=s.key, metadata=meta).submission_id, s.key

    with ThreadPoolExecutor(max_workers=2) as pool:
        submitted = dict(pool.map(upload, sources))
    final = em.wait(list(submitted), timeout_s=7200)
    rejected = [(s.external_id, s.rejection_code) for s in final if s.state != "INDEXED"]
    if rejected:
        log(f"not indexed: {rejected}")
    return {s.track_id: submitted[s.submission_id] for s in final if s.state == "INDEXED"}


def _event_of(e: Any, keys: dict[str, str], decided_s: float) -> Event:
    return Event(
        e.type, keys.get(e.track_id, "?") if e.track_id else "", e.start_s, e.end_s,
        e.track_offset_s, decided_s,
    )  # fmt: skip


def run_fast(em: Any, audio: np.ndarray, keys: dict[str, str]) -> tuple[list[Event], float]:
    """The show through Monitor as fast as the server takes it: (events, wall seconds)."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = int(CHUNK_S * SR) * 2
    chunks = (pcm[i : i + step] for i in range(0, len(pcm), step))
    started = time.perf_counter()
    events = [_event_of(e, keys, e.stream_time_s) for e in em.monitor(chunks, stream_name="bench")]
    return events, time.perf_counter() - started


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the processes and all their descendants (children, reaped or not)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _with_descendants(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / ticks


def _with_descendants(pids: Sequence[int]) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, ValueError):
                continue
    found, frontier = set(pids), list(pids)
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found.add(child)
                frontier.append(child)
    return sorted(found)


@dataclass
class LoadResult:
    streams: int
    seconds: float
    lag_p95_s: float
    lag_max_s: float
    delays: list[float]
    cpu_per_stream_s: dict[str, float]
    errors: int


async def _paced(audio: np.ndarray, began: float, sent: list[float]) -> AsyncIterator[bytes]:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = int(CHUNK_S * SR) * 2
    for n, i in enumerate(range(0, len(pcm), step)):
        due = began + n * CHUNK_S
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        sent.append(time.monotonic() - due)  # > 0: sending fell behind real time
        yield pcm[i : i + step]


async def _load(
    search: str, show: Show, keys: dict[str, str], streams: int, seconds: float
) -> tuple[list[list[float]], list[list[Event]], int]:
    from earmark.aio import AsyncEarmark

    sending: list[list[float]] = [[] for _ in range(streams)]
    lags: list[list[float]] = [[] for _ in range(streams)]
    events: list[list[Event]] = [[] for _ in range(streams)]
    errors = 0

    async def one(n: int, em: AsyncEarmark) -> None:
        nonlocal errors
        start = int((n * 37.0 % max(1.0, show.seconds - seconds)) * SR)
        audio = show.audio[start : start + int(seconds * SR)]
        began = time.monotonic() + 0.02 * n
        try:
            paced = _paced(audio, began, sending[n])
            async for e in em.monitor(paced, stream_name=f"load-{n}"):
                wall_s = time.monotonic() - began
                events[n].append(_event_of(e, keys, wall_s))
                # How far the analysis is behind the audio sent (0: keeping up).
                lags[n].append(wall_s - e.stream_time_s)
        except Exception as exc:
            errors += 1
            log(f"stream {n}: {exc}")

    async with AsyncEarmark(search=search) as em:
        await asyncio.gather(*(one(n, em) for n in range(streams)))
    return [s + lag for s, lag in zip(sending, lags, strict=True)], events, errors


def run_load(
    info: Any, show: Show, keys: dict[str, str], streams: int, seconds: float
) -> LoadResult:
    groups = {
        "fingerprint": [int(info.services["fingerprint"]["pid"])],
        "search": [int(info.services["search"]["pid"])],
        "postgres": [_postmaster_pid(Path(info.pgdata))],
    }
    before = {name: cpu_seconds(pids) for name, pids in groups.items()}
    started = time.monotonic()
    lags, events, errors = asyncio.run(_load(info.addr("search"), show, keys, streams, seconds))
    wall = time.monotonic() - started
    used = {name: cpu_seconds(pids) - before[name] for name, pids in groups.items()}
    delays: list[float] = []
    for n in range(streams):
        offset_s = n * 37.0 % max(1.0, show.seconds - seconds)
        shifted = Show(
            audio=show.audio[:0],
            plays=[
                dataclasses.replace(p, start_s=p.start_s - offset_s, end_s=p.end_s - offset_s)
                for p in show.plays
                if p.start_s - offset_s > 0 and p.start_s - offset_s < seconds - 8
            ],
        )
        delays += score(shifted, events[n]).delays
    flat = [x for lag in lags for x in lag]
    audio_s = streams * seconds
    return LoadResult(
        streams=streams,
        seconds=wall,
        lag_p95_s=_pct(flat, 95),
        lag_max_s=max(flat, default=0.0),
        delays=delays,
        cpu_per_stream_s={k: v / audio_s for k, v in used.items()},
        errors=errors,
    )


def _postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


def wait_until_idle(info: Any, quiet_s: float = 10.0, timeout_s: float = 3600.0) -> None:
    """Let features and the transcoder finish the catalog before load is measured."""
    pids = [int(info.services[n]["pid"]) for n in ("features", "transcoder", "ingest")]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = cpu_seconds(pids)
        time.sleep(quiet_s)
        if cpu_seconds(pids) - before < 0.05 * quiet_s:
            return
    log("background work still running; measuring anyway")


# ---------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", type=Path, default=corpus.DEFAULT_CORPUS_DIR)
    p.add_argument("--catalog", type=int, default=40, help="catalog tracks")
    p.add_argument("--strangers", type=int, default=8, help="out-of-catalog music tracks")
    p.add_argument("--plays", type=int, default=15, help="catalog excerpts in the show")
    p.add_argument("--conditions", default="clean,mp3-64k,pink-15db")
    p.add_argument("--offline", action="store_true", help="in-process pipeline, no servers")
    p.add_argument("--no-tail", action="store_true", help="offline: ignore not-yet-final landmarks")
    p.add_argument(
        "--single-grid", action="store_true", help="offline: one extraction grid, not 4 shifts"
    )
    p.add_argument("--hop", type=float, default=1.0, help="offline: seconds between analyses")
    p.add_argument("--streams", default="10,25,50", help="concurrent real-time streams to try")
    p.add_argument("--stream-s", type=float, default=90.0, help="seconds each load stream plays")
    p.add_argument("--home", type=Path, help="EARMARK_HOME for the stack (default: a temp dir)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log(f"loading {args.catalog} catalog and {args.strangers} other tracks")
    catalog, strangers = load_sources(args.corpus, args.catalog, args.strangers)
    show = build_show(catalog, strangers, plays=args.plays)
    joins = {
        j: sum(p.join == j for p in show.plays) for j in ("gap", "cut", "crossfade", "talkover")
    }
    log(f"show: {show.seconds / 60:.1f} min, {len(show.plays)} catalog excerpts {joins}")
    conditions = [c for c in args.conditions.split(",") if c]
    rows = [*SCORE_HEADER]
    scores: dict[str, Score] = {}
    if args.offline:
        memory = MemoryCatalog(catalog)
        for condition in conditions:
            events, cpu = run_offline(
                degrade(show.audio, condition),
                memory,
                use_tail=not args.no_tail,
                single_grid=args.single_grid,
                hop_s=args.hop,
            )
            scores[condition] = score(show, events)
            rows += score_rows(condition, scores[condition])
            log(f"{condition}: {cpu / show.seconds * 1000:.1f} ms CPU per stream second")
        _print_details(rows, scores)
        return 0

    from earmark import Earmark
    from earmark_stack import down, up

    home = args.home or Path(tempfile.mkdtemp(prefix="earmark-monitor-bench-"))
    info = up(home, extra_env={"EARMARK_RENDITIONS": "mp3-64:mp3:64"}, progress=log)
    try:
        with Earmark(ingest=info.addr("ingest"), search=info.addr("search")) as em:
            started = time.monotonic()
            keys = ingest(em, catalog)
            log(f"catalog: {len(keys)} tracks indexed in {time.monotonic() - started:.0f} s")
            indexed = set(keys.values())
            show.plays = [p for p in show.plays if p.key in indexed]
            wait_until_idle(info)
            for condition in conditions:
                events, wall = run_fast(em, degrade(show.audio, condition), keys)
                scores[condition] = score(show, events)
                rows += score_rows(condition, scores[condition])
                log(f"{condition}: {show.seconds / wall:.0f}x real time for one stream")
        _print_details(rows, scores)
        load_rows = [
            "| streams | analysis behind real time p95 / max (s) | detection delay p50 / p95"
            " (s) | CPU s per stream-s: fingerprint / search / PostgreSQL | streams per"
            " 2 cores at that cost | errors |",
            "|---|---|---|---|---|---|",
        ]
        for streams in [int(s) for s in args.streams.split(",") if s]:
            log(f"load: {streams} real-time streams for {args.stream_s:.0f} s")
            r = run_load(info, show, keys, streams, args.stream_s)
            cpu = r.cpu_per_stream_s
            total = sum(cpu.values())
            load_rows.append(
                f"| {streams} | {r.lag_p95_s:.2f} / {r.lag_max_s:.2f}"
                f" | {_pct(r.delays, 50):.1f} / {_pct(r.delays, 95):.1f}"
                f" | {cpu['fingerprint']:.4f} / {cpu['search']:.4f} / {cpu['postgres']:.4f}"
                f" | {2 / total:.0f} | {r.errors} |"
            )
            print("\n".join(load_rows), flush=True)
        print(f"\nload average after the run: {os.getloadavg()}")
    finally:
        if args.home is None:
            down(home)
    return 0


def _print_details(rows: list[str], scores: dict[str, Score]) -> None:
    print("\n".join(rows))
    for condition, s in scores.items():
        for join, delays in sorted(s.delay_by_join.items()):
            print(f"{condition}: delay after a {join}: {', '.join(f'{d:.1f}' for d in delays)}")
        for e in s.false_events:
            print(
                f"{condition}: false STARTED {e.key} at {e.start_s:.1f} s, "
                f"decided {e.decided_s:.1f}"
            )
        for p in s.missed:
            print(f"{condition}: missed {p.key} at {p.start_s:.1f}-{p.end_s:.1f} s ({p.join})")


if __name__ == "__main__":
    raise SystemExit(main())
