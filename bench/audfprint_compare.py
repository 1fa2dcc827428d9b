"""audfprint on the query set of `bench.run`, with the same scoring (issue 3).

Usage::

    python -m bench.audfprint_compare --audfprint ~/src/audfprint \\
        --audfprint-python ~/venvs/audfprint/bin/python \\
        [--earmark-records /tmp/earmark-bench/records.jsonl] [--limit N] \\
        [--lengths 2,5] [--conditions clean,pink_5db]

audfprint (https://github.com/dpwe/audfprint) is not part of Earmark and is not
installed by it: ``--audfprint`` is a checkout of it and ``--audfprint-python``
an interpreter that has its requirements (numpy, scipy, docopt, joblib,
psutil). This script only runs its command line.

Steps:

1. The same catalog split and query set as `bench.run` with the same
   arguments: `bench.degrade.split_catalog`, `select_query_tracks` and
   `build_queries`, seed and defaults included.
2. Every catalog track decoded by `bench.corpus.decode_audio` (the decode the
   query offsets are defined on) and written as 16-bit mono WAV; every query
   written as 16-bit WAV by `bench.synthetic.wav_bytes`, the bytes bench.run
   sends to Earmark.
3. ``audfprint.py new`` over the catalog (its default parameters unless
   ``--audfprint-args``): wall and CPU time, size of the saved database file.
4. ``audfprint.py match`` over no queries, a warm-up and then BASELINE_RUNS
   times (the median: starting Python and loading the database), and once per
   clip length over that length's queries; the per-query time is
   (batch - empty run) / queries, wall and CPU (CPU of the whole process tree,
   ffmpeg included). audfprint prints no per-query times: means only.
5. Its output parsed into `bench.report.QueryRecord`s and scored by
   `bench.report`: top-1, offset within 0.5 s (speed-corrected), false
   positives on held-out clips. With ``--earmark-records`` (a bench.run
   records.jsonl) the two are also compared query by query.

audfprint's answer, ``Matched Q ... as REF at T s with A of C common hashes``:
T is the modal difference (reference frame - query frame) times its hop,
256 / 11025 s, i.e. where the query's first sample lies in the reference, in
seconds, printed to 0.1 s. That is `bench.report`'s ``offset_s`` (truth at
query time 0), so no conversion is needed. The database keeps only the low
``maxtimebits`` (14) bits of each frame number, so in tracks longer than
16384 frames (380.4 s) T is only right modulo that period; the tables count
such answers apart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench import report
from bench.corpus import DEFAULT_CORPUS_DIR, CorpusTrack, decode_audio, ffmpeg_exe, list_corpus
from bench.degrade import (
    DEFAULT_LENGTHS,
    DEFAULT_SR,
    BenchPlan,
    Query,
    default_conditions,
)
from bench.synthetic import wav_bytes

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(tempfile.gettempdir()) / "audfprint-bench"

# audfprint's fixed analysis grid: 512-point FFT, hop 256 at 11025 Hz.
AUDFPRINT_SR = 11025
AUDFPRINT_HOP_S = 256 / AUDFPRINT_SR
# Default --maxtime: frame numbers are stored modulo this many frames.
AUDFPRINT_MAXTIME_FRAMES = 16384
# Default --hashbits and --bucketsize: the shape of its in-memory hash table.
AUDFPRINT_HASHBITS = 20
AUDFPRINT_BUCKETSIZE = 100
# `match` over no queries, repeated: start-up and database load, the baseline
# subtracted from every batch (the first run also warms the page cache).
BASELINE_RUNS = 3


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ its output

# One result line of ``audfprint.py match`` at its default verbosity (1),
# without --find-time-range: audfprint_match.Matcher.file_match_to_msgs.
_MATCHED = re.compile(
    r"^Matched (?P<query>.+?) (?P<dur>\d+\.\d) sec (?P<nhash>\d+) raw hashes"
    r" as (?P<ref>.+) at\s+(?P<offset>-?\d+\.\d+) s"
    r" with\s+(?P<aligned>\d+) of\s+(?P<common>\d+) common hashes at rank\s+(?P<rank>\d+)$"
)
_SAVED = re.compile(
    r"^Saved fprints for \d+ files \( (?P<hashes>\d+) hashes\) to .+"
    r" \((?P<dropped>[\d.]+)% dropped\)$"
)
_NOMATCH = re.compile(r"^NOMATCH (?P<query>.+?) (?P<dur>\d+\.\d) sec (?P<nhash>\d+) raw hashes$")


@dataclass(frozen=True)
class AudfprintAnswer:
    """audfprint's top answer for one query file."""

    query_path: str
    # Reference file as named in the database; None for NOMATCH.
    ref_path: str | None
    # Where the query's first sample lies in the reference, seconds (0.1 s steps).
    offset_s: float | None
    # Time-consistent hashes of the best alignment, and hashes in common at any alignment.
    aligned_hashes: int
    common_hashes: int
    query_hashes: int


def parse_match_line(line: str) -> AudfprintAnswer | None:
    """The answer on one output line of ``match``, None for any other line."""
    line = line.rstrip("\r\n")
    if m := _MATCHED.match(line):
        return AudfprintAnswer(
            query_path=m["query"],
            ref_path=m["ref"],
            offset_s=float(m["offset"]),
            aligned_hashes=int(m["aligned"]),
            common_hashes=int(m["common"]),
            query_hashes=int(m["nhash"]),
        )
    if m := _NOMATCH.match(line):
        return AudfprintAnswer(
            query_path=m["query"],
            ref_path=None,
            offset_s=None,
            aligned_hashes=0,
            common_hashes=0,
            query_hashes=int(m["nhash"]),
        )
    return None


def parse_match_output(lines: Iterable[str]) -> dict[str, AudfprintAnswer]:
    """Top answer per query path; the first line wins when --max-matches > 1."""
    answers: dict[str, AudfprintAnswer] = {}
    for line in lines:
        ans = parse_match_line(line)
        if ans is not None:
            answers.setdefault(ans.query_path, ans)
    return answers


def parse_saved_line(lines: Iterable[str]) -> tuple[int, float] | None:
    """(hashes, percent dropped) from the "Saved fprints" line that ``new`` prints."""
    for line in lines:
        if m := _SAVED.match(line.rstrip("\r\n")):
            return int(m["hashes"]), float(m["dropped"])
    return None


def to_record(
    query: Query,
    answer: AudfprintAnswer | None,
    track_of_ref: Mapping[str, str],
    latency_ms: float,
) -> report.QueryRecord:
    """A scored record; ``track_of_ref`` maps audfprint's reference names to track ids."""
    if answer is None:
        return report.QueryRecord.answered(
            query, latency_ms=latency_ms, error="no result line from audfprint"
        )
    if answer.ref_path is None:
        return report.QueryRecord.answered(query, latency_ms=latency_ms)
    return report.QueryRecord.answered(
        query,
        predicted_track=track_of_ref.get(answer.ref_path, answer.ref_path),
        predicted_offset_s=answer.offset_s,
        score=float(answer.aligned_hashes),
        latency_ms=latency_ms,
    )


def offset_right_modulo(
    rec: report.QueryRecord, period_s: float, tol_s: float = report.OFFSET_TOL_S
) -> bool:
    """A hit whose offset is right modulo ``period_s`` (audfprint's time wrap)."""
    if not report.is_hit(rec) or rec.predicted_offset_s is None:
        return False
    truth = report.truth_offset_s(rec)
    return report.offset_error_s(rec.predicted_offset_s, truth, period_s) <= tol_s


def option_value(extra_args: Sequence[str], *names: str) -> str | None:
    """The last value given to any of ``names`` ("--opt V" or "--opt=V"), else None."""
    found = None
    it = iter(extra_args)
    for arg in it:
        key, eq, value = arg.partition("=")
        if key in names:
            found = value if eq else next(it, None)
    return found


def maxtime_frames(extra_args: Sequence[str]) -> int:
    """Frames before stored times wrap: --maxtimebits wins over --maxtime, as in audfprint."""
    bits = option_value(extra_args, "-u", "--maxtimebits")
    if bits is not None:
        return 1 << int(bits)
    frames = option_value(extra_args, "-t", "--maxtime")
    return int(frames) if frames is not None else AUDFPRINT_MAXTIME_FRAMES


def table_bytes(extra_args: Sequence[str]) -> int:
    """Size of audfprint's in-memory hash table: 2**hashbits buckets x bucketsize x uint32.

    Fixed when the database is created, whatever the catalog holds.
    """
    hashbits = int(option_value(extra_args, "-h", "--hashbits") or AUDFPRINT_HASHBITS)
    depth = int(option_value(extra_args, "-b", "--bucketsize") or AUDFPRINT_BUCKETSIZE)
    return (1 << hashbits) * depth * 4


# ----------------------------------------------------------------- running it


@dataclass(frozen=True)
class Timed:
    wall_s: float
    cpu_s: float
    returncode: int


def run_timed(cmd: Sequence[str], env: Mapping[str, str], log_path: Path) -> Timed:
    """Run ``cmd`` to completion; wall time and CPU time of its whole process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with log_path.open("w") as out:
        proc = subprocess.run(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, env=dict(env), check=False
        )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timed(wall, cpu, proc.returncode)


@dataclass(frozen=True)
class Audfprint:
    """How to call a checkout of audfprint's command line."""

    checkout: Path
    python: Path
    env: Mapping[str, str]
    extra_args: tuple[str, ...] = ()
    ncores: int = 1

    def command(self, verb: str, dbase: Path, list_file: Path, *more: str) -> list[str]:
        return [
            str(self.python), str(self.checkout / "audfprint.py"), verb,
            "--dbase", str(dbase), "--ncores", str(self.ncores), "--list",
            *self.extra_args, *more, str(list_file),
        ]  # fmt: skip

    def run(self, verb: str, dbase: Path, list_file: Path, log_path: Path, *more: str) -> Timed:
        timed = run_timed(self.command(verb, dbase, list_file, *more), self.env, log_path)
        if timed.returncode != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"audfprint {verb} exited {timed.returncode}:\n{tail}")
        return timed


def audfprint_env(bin_dir: Path) -> dict[str, str]:
    """Environment for audfprint: Earmark's ffmpeg first on PATH, numerics on one thread.

    audfprint reads every file through an ``ffmpeg`` found on PATH; the link
    makes it use the same build that cut the queries. One BLAS/OpenMP thread
    so that "one process" is one core's work.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    link = bin_dir / "ffmpeg"
    if not link.exists():
        link.symlink_to(ffmpeg_exe())
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    return env


def audfprint_version(af: Audfprint) -> str:
    commit = ""
    try:
        commit = subprocess.run(
            ["git", "-C", str(af.checkout), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown commit (not a git checkout)"
    probe = subprocess.run(
        [str(af.python), "-c",
         "import sys, numpy, scipy; print(sys.version.split()[0], numpy.__version__, "
         "scipy.__version__)"],
        capture_output=True, text=True, check=False, env=dict(af.env),
    )  # fmt: skip
    parts = probe.stdout.split()
    libs = f"Python {parts[0]}, numpy {parts[1]}, scipy {parts[2]}" if len(parts) == 3 else "?"
    return f"{commit} ({libs})"


# ------------------------------------------------------------------ the files


@dataclass(frozen=True)
class CatalogFiles:
    track_of_ref: dict[str, str]  # reference WAV path -> corpus track id
    audio_s: float
    # Decoding the original files (Ogg, MP3, ...) by ffmpeg, which Earmark's
    # ingest does too and audfprint's `new` then no longer has to.
    decode_wall_s: float
    decode_cpu_s: float


def write_catalog(tracks: Sequence[CorpusTrack], folder: Path) -> CatalogFiles:
    """Catalog tracks decoded by `decode_audio` and written as 16-bit WAV at DEFAULT_SR."""
    folder.mkdir(parents=True, exist_ok=True)
    track_of_ref: dict[str, str] = {}
    audio_s = wall = 0.0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for i, t in enumerate(tracks):
        path = folder / f"ref{i:05d}.wav"
        t0 = time.perf_counter()
        x = decode_audio(t.path, DEFAULT_SR)
        wall += time.perf_counter() - t0
        path.write_bytes(wav_bytes(x, DEFAULT_SR))
        track_of_ref[str(path)] = t.track_id
        audio_s += x.size / DEFAULT_SR
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return CatalogFiles(track_of_ref, audio_s, wall, cpu)


def write_queries(queries: Sequence[Query], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for q in queries:
        path = folder / f"{q.query_id}.wav"
        path.write_bytes(wav_bytes(q.audio, q.sr))
        paths[q.query_id] = path
    return paths


def write_list(paths: Iterable[Path | str], list_file: Path) -> Path:
    list_file.write_text("".join(f"{p}\n" for p in paths))
    return list_file


# --------------------------------------------------------------- measurements


@dataclass(frozen=True)
class IngestFigures:
    tracks: int
    audio_s: float
    wall_s: float
    cpu_s: float
    db_bytes: int
    # From its "Saved fprints ..." line: hashes offered, share dropped from full buckets.
    hashes: int = 0
    dropped_pct: float = math.nan
    # Decoding the originals to WAV before `new` (CatalogFiles); NaN: not measured.
    decode_wall_s: float = math.nan
    decode_cpu_s: float = math.nan

    @property
    def x_realtime(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s else math.nan

    @property
    def x_realtime_with_decode(self) -> float:
        """From the original files: decoding them plus `new`, wall time."""
        total = self.wall_s + self.decode_wall_s
        return self.audio_s / total if total else math.nan

    @property
    def x_realtime_cpu(self) -> float:
        return self.audio_s / self.cpu_s if self.cpu_s else math.nan

    @property
    def mb_per_hour(self) -> float:
        return self.db_bytes / 1e6 / (self.audio_s / 3600) if self.audio_s else math.nan


@dataclass(frozen=True)
class MatchBatch:
    length_s: float
    queries: int
    wall_s: float
    cpu_s: float


@dataclass(frozen=True)
class MatchFigures:
    load: Timed  # `match` over no queries (median): Python start-up and reading the database
    batches: list[MatchBatch]

    def per_query_ms(self, batch: MatchBatch, *, cpu: bool = False) -> float:
        total, base = (batch.cpu_s, self.load.cpu_s) if cpu else (batch.wall_s, self.load.wall_s)
        return 1000 * max(total - base, 0.0) / batch.queries if batch.queries else math.nan

    def overall_ms(self, *, cpu: bool = False) -> float:
        n = sum(b.queries for b in self.batches)
        total = sum(self.per_query_ms(b, cpu=cpu) * b.queries for b in self.batches)
        return total / n if n else math.nan


def match_all(
    af: Audfprint,
    dbase: Path,
    queries: Sequence[Query],
    paths: Mapping[str, Path],
    work: Path,
    out: Path,
    track_of_ref: Mapping[str, str],
) -> tuple[list[report.QueryRecord], MatchFigures]:
    empty = write_list([], work / "queries-none.txt")
    af.run("match", dbase, empty, out / "match-empty.log")  # warm-up
    runs = [af.run("match", dbase, empty, out / "match-empty.log") for _ in range(BASELINE_RUNS)]
    load = Timed(
        float(np.median([r.wall_s for r in runs])), float(np.median([r.cpu_s for r in runs])), 0
    )
    log(f"  database load + start-up: {load.wall_s:.1f} s wall, {load.cpu_s:.1f} s CPU")
    records: list[report.QueryRecord] = []
    batches: list[MatchBatch] = []
    figures = MatchFigures(load, batches)
    for length in sorted({q.length_s for q in queries}):
        batch_q = [q for q in queries if q.length_s == length]
        tag = f"{length:g}s"
        list_file = write_list((paths[q.query_id] for q in batch_q), work / f"queries-{tag}.txt")
        result_file = out / f"match-{tag}.txt"
        timed = af.run("match", dbase, list_file, out / f"match-{tag}.log", "--opfile",
                       str(result_file))  # fmt: skip
        batch = MatchBatch(length, len(batch_q), timed.wall_s, timed.cpu_s)
        batches.append(batch)
        answers = parse_match_output(result_file.read_text().splitlines())
        per_query = figures.per_query_ms(batch)
        records += [
            to_record(q, answers.get(str(paths[q.query_id])), track_of_ref, per_query)
            for q in batch_q
        ]
        log(
            f"  {tag}: {len(batch_q)} queries in {timed.wall_s:.0f} s wall "
            f"({per_query:.0f} ms/query after start-up), {len(answers)} result lines"
        )
    order = {q.query_id: i for i, q in enumerate(queries)}
    records.sort(key=lambda r: order[r.query_id])
    return records, figures


# ------------------------------------------------------------------ Earmark


def query_key(rec: report.QueryRecord) -> tuple[str, str, float, float, bool]:
    """What a query is, independent of its position in the set (ids depend on --limit)."""
    return (rec.track_id, rec.condition, rec.length_s, round(rec.offset_s, 4), rec.negative)


def earmark_method(methods: Sequence[str]) -> str | None:
    """The identify method compared: landmarks (audfprint's kind of identifier), else
    auto (records written before bench.run had methods), else the first one run."""
    for preferred in ("landmarks", "auto"):
        if preferred in methods:
            return preferred
    return methods[0] if methods else None


def load_earmark_records(path: Path) -> tuple[list[report.QueryRecord], str | None]:
    """A bench.run records.jsonl: the records of one method (`earmark_method`), and it."""
    by_method: dict[str, list[report.QueryRecord]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            key = str(row.get("method") or "auto")
            by_method.setdefault(key, []).append(report.QueryRecord.from_json(row))
    chosen = earmark_method(list(by_method))
    return (by_method[chosen] if chosen else []), chosen


def paired(
    earmark: Sequence[report.QueryRecord], audfprint: Sequence[report.QueryRecord]
) -> tuple[list[report.QueryRecord], list[report.QueryRecord]]:
    """The records of the queries both sides answered, in audfprint's order."""
    by_key = {query_key(r): r for r in earmark}
    e_out, a_out = [], []
    for r in audfprint:
        e = by_key.get(query_key(r))
        if e is not None:
            e_out.append(e)
            a_out.append(r)
    return e_out, a_out


def _table_value(text: str, label: str, column: int) -> float | None:
    """The first number in ``column`` of the markdown row labelled ``label``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > column and cells[0] == label:
            m = re.search(r"-?\d+(?:\.\d+)?", cells[column])
            if m:
                return float(m[0])
    return None


def earmark_facts(report_md: str) -> dict[str, float]:
    """Index size and ingest speed from a bench.run report.md (rendered by bench.run.render)."""
    facts: dict[str, float] = {}
    if (v := _table_value(report_md, "total", 2)) is not None:
        facts["index_mb_per_hour"] = v
    if (v := _table_value(report_md, "ingest speed, end to end", 1)) is not None:
        facts["ingest_x_realtime"] = v
    return facts


def paired_rate_table(
    earmark: Sequence[report.QueryRecord],
    audfprint: Sequence[report.QueryRecord],
    metric: str = "hit_rate",
) -> str:
    """Condition x length grid of positives, "Earmark / audfprint" percentages per cell.

    The two record lists are paired (`paired`): same queries, same order.
    """
    lengths = sorted({r.length_s for r in audfprint})
    conditions = list(dict.fromkeys(r.condition for r in audfprint if not r.negative))

    def rate(recs: Iterable[report.QueryRecord]) -> str:
        return report.pct(getattr(report.summarize(recs).pos_total(), metric))

    def pair(condition: str | None, length: float | None) -> str:
        def keep(r: report.QueryRecord) -> bool:
            return (condition in (None, r.condition)) and (length in (None, r.length_s))

        return f"{rate(filter(keep, earmark))} / {rate(filter(keep, audfprint))}"

    headers = ["condition", *(f"{x:g} s" for x in lengths), "all"]
    rows: list[list[object]] = [
        [c, *(pair(c, x) for x in lengths), pair(c, None)] for c in conditions
    ]
    rows.append(["all conditions", *(pair(None, x) for x in lengths), pair(None, None)])
    return report.markdown_table(headers, rows)


def _ratio(audfprint: float, earmark: float) -> str:
    if math.isnan(audfprint) or math.isnan(earmark) or earmark == 0:
        return "-"
    return f"{audfprint / earmark:.2f}"


def comparison_rows(
    e_recs: Sequence[report.QueryRecord],
    a_recs: Sequence[report.QueryRecord],
    facts: Mapping[str, float],
    ingest: IngestFigures,
    match: MatchFigures,
) -> list[list[object]]:
    e_sum, a_sum = report.summarize(e_recs), report.summarize(a_recs)
    e_pos, a_pos = e_sum.pos_total(), a_sum.pos_total()
    e_neg, a_neg = e_sum.neg_total(), a_sum.neg_total()
    rows: list[list[object]] = [
        ["top-1, all positives, %", report.pct(e_pos.hit_rate), report.pct(a_pos.hit_rate),
         _ratio(a_pos.hit_rate, e_pos.hit_rate)],
        ["offset right, all positives, %", report.pct(e_pos.offset_rate),
         report.pct(a_pos.offset_rate), _ratio(a_pos.offset_rate, e_pos.offset_rate)],
        ["false positives, held-out clips, %", report.pct(e_neg.fp_rate, 2),
         report.pct(a_neg.fp_rate, 2), _ratio(a_neg.fp_rate, e_neg.fp_rate)],
    ]  # fmt: skip
    e_mb = facts.get("index_mb_per_hour", math.nan)
    e_x = facts.get("ingest_x_realtime", math.nan)
    rows.append(["index, MB per hour of audio", _num(e_mb, 2), _num(ingest.mb_per_hour, 2),
                 _ratio(ingest.mb_per_hour, e_mb)])  # fmt: skip
    rows.append(["ingest speed, x real time (audfprint: `new` on WAV)", _num(e_x, 0),
                 _num(ingest.x_realtime, 0), _ratio(ingest.x_realtime, e_x)])  # fmt: skip
    with_decode = ingest.x_realtime_with_decode
    if not math.isnan(with_decode):
        rows.append(["ingest speed, x real time (audfprint: decode + `new`)", _num(e_x, 0),
                     _num(with_decode, 0), _ratio(with_decode, e_x)])  # fmt: skip
    for batch in match.batches:
        lat = [r.latency_ms for r in e_recs if r.length_s == batch.length_s and r.error is None]
        e_ms = float(np.mean(lat)) if lat else math.nan
        a_ms = match.per_query_ms(batch)
        rows.append([f"time per query, {batch.length_s:g} s clips, mean ms", report.ms(e_ms),
                     report.ms(a_ms), _ratio(a_ms, e_ms)])  # fmt: skip
    lat = [r.latency_ms for r in e_recs if r.error is None]
    e_all = float(np.mean(lat)) if lat else math.nan
    a_all = match.overall_ms()
    rows.append(["time per query, all clips, mean ms", report.ms(e_all), report.ms(a_all),
                 _ratio(a_all, e_all)])  # fmt: skip
    server = [r.server_ms for r in e_recs if r.error is None and r.server_ms is not None]
    if server:
        e_srv = float(np.mean(server))
        rows.append(["time per query, all clips, Earmark's server_ms, mean ms",
                     report.ms(e_srv), report.ms(a_all), _ratio(a_all, e_srv)])  # fmt: skip
    return rows


def _num(x: float, digits: int) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


# ------------------------------------------------------------------- report


@dataclass(frozen=True)
class Context:
    argv: list[str]
    audfprint: str
    extra_args: tuple[str, ...]
    ncores: int
    corpus_tracks: int
    catalog_tracks: int
    held_out_tracks: int
    query_tracks: tuple[int, int]
    wall_s: float


def render(
    records: Sequence[report.QueryRecord],
    ingest: IngestFigures,
    match: MatchFigures,
    ctx: Context,
    earmark: Sequence[report.QueryRecord] | None = None,
    facts: Mapping[str, float] | None = None,
    earmark_source: str = "",
) -> str:
    summary = report.summarize(records)
    wrap_frames = maxtime_frames(ctx.extra_args)
    wrap_s = wrap_frames * AUDFPRINT_HOP_S
    hits = [r for r in records if report.is_hit(r)]
    wrapped_only = sum(
        offset_right_modulo(r, wrap_s) and not report.is_offset_right(r) for r in hits
    )
    n_pos = sum(not r.negative for r in records)
    errors = sum(r.error is not None for r in records)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    params = " ".join(ctx.extra_args) or "none (its defaults)"
    out = [
        f"### audfprint, {now}",
        "",
        f"- command: `{_command_line(ctx.argv)}`",
        f"- audfprint: {ctx.audfprint}; extra options: {params}; --ncores {ctx.ncores}",
        f"- machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        f"- corpus: {ctx.corpus_tracks} tracks; catalog {ctx.catalog_tracks} tracks "
        f"({ingest.audio_s / 3600:.2f} h), held out {ctx.held_out_tracks}; queries from "
        f"{ctx.query_tracks[0]} catalog and {ctx.query_tracks[1]} held-out tracks",
        f"- queries: {len(records)} ({n_pos} positive, {len(records) - n_pos} negative)"
        + (f", {errors} without a result line (counted as no match)" if errors else ""),
        f"- wall time: {ctx.wall_s / 60:.1f} min",
        "",
        "#### Top-1 hit rate, % (right track)",
        "",
        report.hit_table(summary),
        "",
        "#### Offset accuracy, % (right track and offset within 0.5 s, speed-corrected)",
        "",
        report.offset_table(summary),
        "",
        f"Hits whose offset is right only modulo audfprint's time wrap "
        f"({wrap_frames} frames = {wrap_s:.1f} s): {wrapped_only} of {len(hits)}.",
        "",
        *report.misses_and_false_positives(summary),
        "",
        "#### Time per query (one `match` process per clip length, after start-up)",
        "",
        latency_table(match),
        "",
        "#### Ingest and index",
        "",
        ingest_table(ingest, ctx.extra_args),
    ]
    if earmark is not None:
        e_recs, a_recs = paired(earmark, records)
        out += ["", f"#### Earmark vs audfprint on the same {len(a_recs)} queries", ""]
        if earmark_source:
            out += [f"Earmark: {earmark_source}", ""]
        if a_recs:
            out += [
                "Top-1 hit rate, %, Earmark / audfprint:",
                "",
                paired_rate_table(e_recs, a_recs),
                "",
                "Offset accuracy, %, Earmark / audfprint:",
                "",
                paired_rate_table(e_recs, a_recs, "offset_rate"),
                "",
                "Ratios (audfprint / Earmark; Earmark's time per query is its client round "
                "trip through the SDK, audfprint's one core in one process):",
                "",
                report.markdown_table(
                    ["measure", "Earmark", "audfprint", "ratio"],
                    comparison_rows(e_recs, a_recs, facts or {}, ingest, match),
                ),
            ]
        else:
            out += [
                "No query in common: a different seed, or a condition set with another "
                "fastest speed (bench.degrade draws excerpt offsets with room for it)."
            ]
    return "\n".join(out)


def latency_table(match: MatchFigures) -> str:
    rows: list[list[object]] = [
        [f"{b.length_s:g} s", b.queries, report.ms(match.per_query_ms(b)),
         report.ms(match.per_query_ms(b, cpu=True))]
        for b in match.batches
    ]  # fmt: skip
    rows.append(["all", sum(b.queries for b in match.batches), report.ms(match.overall_ms()),
                 report.ms(match.overall_ms(cpu=True))])  # fmt: skip
    load = match.load
    rows.append(["start-up + database load, once per process", "-",
                 report.ms(1000 * load.wall_s), report.ms(1000 * load.cpu_s)])  # fmt: skip
    return report.markdown_table(["clip length", "queries", "wall ms/query", "CPU ms/query"], rows)


def ingest_table(ingest: IngestFigures, extra_args: Sequence[str] = ()) -> str:
    rows = [
        ["tracks", str(ingest.tracks)],
        ["audio", f"{ingest.audio_s / 3600:.2f} h"],
        ["`new`, wall time (one process)", f"{ingest.wall_s:.0f} s"],
        ["ingest speed, wall", f"{ingest.x_realtime:.0f}x real time"],
        ["ingest speed, CPU time (with ffmpeg)", f"{ingest.x_realtime_cpu:.0f}x real time"],
        ["decoding the original files to WAV first", _seconds(ingest.decode_wall_s)],
        [
            "ingest speed from the original files (decode + `new`), wall",
            f"{ingest.x_realtime_with_decode:.0f}x real time"
            if not math.isnan(ingest.x_realtime_with_decode)
            else "not measured",
        ],
        ["database file (gzip pickle)", f"{ingest.db_bytes / 1e6:.1f} MB"],
        ["database file per hour of audio", f"{ingest.mb_per_hour:.2f} MB/h"],
        ["hashes stored", f"{ingest.hashes} ({ingest.dropped_pct:.2f} % dropped: full buckets)"],
        ["hash table in memory (fixed size)", f"{table_bytes(extra_args) / 1e6:.0f} MB"],
    ]
    return report.markdown_table(["measure", "value"], rows)


def _seconds(x: float) -> str:
    return "not measured" if math.isnan(x) else f"{x:.0f} s"


def _command_line(argv: Sequence[str]) -> str:
    return ("python -m bench.audfprint_compare " + shlex.join(argv)).replace(str(Path.home()), "~")


# ---------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.audfprint_compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--audfprint", type=Path, help="checkout of dpwe/audfprint")
    ap.add_argument("--audfprint-python", type=Path, help="python with audfprint's requirements")
    ap.add_argument(
        "--rescore",
        type=Path,
        default=None,
        help="render the report of an earlier run's --out folder again (with "
        "--earmark-records: add the comparison) without running audfprint",
    )
    ap.add_argument(
        "--audfprint-args",
        type=shlex.split,
        default=[],
        help='extra options for both `new` and `match`, e.g. "--maxtimebits 16"',
    )
    ap.add_argument("--ncores", type=int, default=1, help="audfprint --ncores (default 1)")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS_DIR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-track", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="as bench.run --limit")
    ap.add_argument(
        "--lengths",
        type=lambda s: [float(x) for x in s.split(",")],
        default=list(DEFAULT_LENGTHS),
    )
    ap.add_argument(
        "--conditions",
        type=lambda s: s.split(","),
        default=None,
        help="comma-separated subset of: " + ",".join(c.name for c in default_conditions()),
    )
    ap.add_argument("--earmark-records", type=Path, default=None, help="a bench.run records.jsonl")
    ap.add_argument(
        "--earmark-report",
        type=Path,
        default=None,
        help="bench.run report.md for index size and ingest speed "
        "(default: report.md next to --earmark-records)",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    ap.add_argument("--work", type=Path, default=None, help="WAV folder (default: temporary)")
    ap.add_argument("--keep", action="store_true", help="keep the WAVs and the database")
    return ap.parse_args(argv)


def save_run(
    out: Path,
    records: Sequence[report.QueryRecord],
    ingest: IngestFigures,
    match: MatchFigures,
    ctx: Context,
) -> None:
    """records.jsonl and figures.json, enough for `--rescore` to render the report again."""
    with (out / "records.jsonl").open("w") as f:
        f.writelines(json.dumps(r.to_json()) + "\n" for r in records)
    figures = {"ingest": asdict(ingest), "match": asdict(match), "context": asdict(ctx)}
    (out / "figures.json").write_text(json.dumps(figures, indent=1) + "\n")


def load_run(
    folder: Path,
) -> tuple[list[report.QueryRecord], IngestFigures, MatchFigures, Context]:
    records = [
        report.QueryRecord.from_json(json.loads(line))
        for line in (folder / "records.jsonl").read_text().splitlines()
        if line.strip()
    ]
    fig = json.loads((folder / "figures.json").read_text())
    match = MatchFigures(
        load=Timed(**fig["match"]["load"]),
        batches=[MatchBatch(**b) for b in fig["match"]["batches"]],
    )
    c = fig["context"]
    ctx = Context(
        **{**c, "extra_args": tuple(c["extra_args"]), "query_tracks": tuple(c["query_tracks"])}
    )
    return records, IngestFigures(**fig["ingest"]), match, ctx


def measure(
    args: argparse.Namespace, argv: list[str]
) -> tuple[list[report.QueryRecord], IngestFigures, MatchFigures, Context]:
    """Build the query set as bench.run does, run audfprint over it, score its answers."""
    wall0 = time.perf_counter()
    tracks = list_corpus(args.corpus)
    if not tracks:
        raise SystemExit(f"no usable tracks under {args.corpus} (run `make corpus`)")
    plan = BenchPlan.of(tracks, args.seed, args.limit, args.conditions)
    catalog = plan.catalog
    work = args.work or Path(tempfile.mkdtemp(prefix="audfprint-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    af = Audfprint(
        checkout=args.audfprint.resolve(),
        python=args.audfprint_python,
        env=audfprint_env(work / "bin"),
        extra_args=tuple(args.audfprint_args),
        ncores=args.ncores,
    )
    version = audfprint_version(af)
    log(f"audfprint {version}; work folder {work}")
    try:
        log(f"== writing {len(catalog)} catalog tracks as WAV")
        files = write_catalog(catalog, work / "catalog")
        track_of_ref = files.track_of_ref
        dbase = work / "fpdbase.pklz"
        log(f"== audfprint new ({files.audio_s / 3600:.2f} h)")
        catalog_list = write_list(track_of_ref, work / "catalog.txt")
        timed = af.run("new", dbase, catalog_list, args.out / "new.log")
        saved = parse_saved_line((args.out / "new.log").read_text().splitlines())
        hashes, dropped = saved or (0, math.nan)
        ingest = IngestFigures(
            tracks=len(catalog),
            audio_s=files.audio_s,
            wall_s=timed.wall_s,
            cpu_s=timed.cpu_s,
            db_bytes=dbase.stat().st_size,
            hashes=hashes,
            dropped_pct=dropped,
            decode_wall_s=files.decode_wall_s,
            decode_cpu_s=files.decode_cpu_s,
        )
        log(
            f"  {ingest.wall_s:.0f} s = {ingest.x_realtime:.0f}x real time; database "
            f"{ingest.db_bytes / 1e6:.1f} MB = {ingest.mb_per_hour:.2f} MB/h"
        )
        log("== building queries (as bench.run)")
        queries = plan.queries(
            args.lengths, args.per_track, args.seed, progress=lambda m: log("  " + m)
        )
        paths = write_queries(queries, work / "queries")
        log(f"== audfprint match, {len(queries)} queries")
        records, match = match_all(af, dbase, queries, paths, work, args.out, track_of_ref)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    ctx = Context(
        argv=argv,
        audfprint=version,
        extra_args=af.extra_args,
        ncores=af.ncores,
        corpus_tracks=len(tracks),
        catalog_tracks=len(catalog),
        held_out_tracks=len(plan.held_out),
        query_tracks=(len(plan.query_catalog), len(plan.query_held_out)),
        wall_s=time.perf_counter() - wall0,
    )
    return records, ingest, match, ctx


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.rescore is not None:
        records, ingest, match, ctx = load_run(args.rescore)
        out = args.rescore
    else:
        if args.audfprint is None or args.audfprint_python is None:
            log("--audfprint and --audfprint-python are required (unless --rescore)")
            return 2
        if not (args.audfprint / "audfprint.py").is_file():
            log(f"no audfprint.py in {args.audfprint}")
            return 2
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        records, ingest, match, ctx = measure(args, argv)
        save_run(out, records, ingest, match, ctx)

    earmark = facts = None
    source = ""
    if args.earmark_records is not None:
        earmark, method = load_earmark_records(args.earmark_records)
        report_md = args.earmark_report or args.earmark_records.with_name("report.md")
        facts = earmark_facts(report_md.read_text()) if report_md.is_file() else {}
        source = f"`{args.earmark_records}`, method {method}" + (
            f", index and ingest from `{report_md}`" if report_md.is_file() else ""
        )
    text = render(records, ingest, match, ctx, earmark, facts, source)
    print(text)
    (out / "report.md").write_text(text + "\n")
    log(
        f"wrote {out}/report.md"
        if args.rescore
        else f"wrote {out}/records.jsonl, figures.json and report.md"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
