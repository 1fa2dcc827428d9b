"""Deterministic degraded-query generator for the identification benchmark.

Every query is an excerpt of a corpus track, cut at a known offset and then
passed through one degradation *condition*. Time mapping: the excerpt starts at
``offset_s`` in the ORIGINAL track; a condition with ``speed`` r (> 1 = faster)
consumes ``length_s * r`` seconds of the original to produce ``length_s``
seconds of query audio, so query time t corresponds to original time
``offset_s + t * speed``.

Usage::

    python -m bench.degrade --corpus ~/.cache/earmark/corpus --out /tmp/q --limit 20

writes ``<out>/wav/*.wav`` (float32 mono), ``queries.jsonl``, ``catalog.jsonl``
(every track the index under test must contain) and ``held_out.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from pathlib import Path

import numpy as np
from scipy import signal
from scipy.io import wavfile

from bench.corpus import DEFAULT_CORPUS_DIR, CorpusTrack, decode_audio, ffmpeg_exe, list_corpus

DEFAULT_SR = 16000
DEFAULT_LENGTHS: tuple[float, ...] = (1, 2, 3, 5, 10)
HELD_OUT_FRACTION = 0.2

# Audio is degraded with this much original-track context on each side and then
# trimmed, so reverb tails, resampler/filter transients and codec priming come
# from real neighbouring audio instead of an artificial cut.
MARGIN_S = 1.0
# Excerpts quieter than this (intros, fade-outs, pauses) make SNR targets
# meaningless and are re-drawn.
MIN_EXCERPT_DBFS = -45.0
PEAK_LIMIT = 0.99

Rng = np.random.Generator


# --------------------------------------------------------------------------- DSP


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def pink_noise(n: int, rng: Rng) -> np.ndarray:
    """Unit-RMS 1/f noise, by shaping white Gaussian noise in the frequency domain."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(spec.size, dtype=np.float64)
    freqs[0] = 1.0
    spec /= np.sqrt(freqs)  # power ~ 1/f  <=>  amplitude ~ 1/sqrt(f)
    spec[0] = 0.0  # no DC offset
    out = np.fft.irfft(spec, n)
    return (out / (rms(out) or 1.0)).astype(np.float32)


def mix_at_snr(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """x + noise scaled so that 10*log10(P_x / P_noise) == snr_db exactly."""
    p_noise = rms(noise)
    if p_noise == 0.0:
        return x.copy()
    gain = rms(x) / p_noise * 10.0 ** (-snr_db / 20.0)
    return (x + gain * noise[: x.size]).astype(np.float32)


def bandpass(x: np.ndarray, sr: int, lo_hz: float = 300.0, hi_hz: float = 3400.0) -> np.ndarray:
    """Telephone band: Butterworth band-pass, 4th order per edge, applied zero-phase.

    Zero-phase (forward-backward) so the filter's group delay (~20-40 ms) does
    not shift the audio against the labelled offset; it also doubles the
    effective roll-off, roughly what a phone's codec band limit does.
    """
    sos = signal.butter(4, [lo_hz, hi_hz], btype="bandpass", fs=sr, output="sos")
    return signal.sosfiltfilt(sos, x).astype(np.float32)


def room_impulse_response(sr: int, rng: Rng, rt60_s: float = 0.6) -> np.ndarray:
    """Synthetic room: direct path plus an exponentially decaying noise tail."""
    n = int(rt60_s * 1.2 * sr)
    t = np.arange(n) / sr
    # -60 dB amplitude after rt60_s: exp(-k * rt60) = 1e-3.
    envelope = np.exp(-math.log(1000.0) * t / rt60_s)
    # Low-passed noise: air and wall absorption damp highs faster than lows.
    sos = signal.butter(2, 4000.0, btype="lowpass", fs=sr, output="sos")
    tail = signal.sosfilt(sos, rng.standard_normal(n)) * envelope
    # Reflections begin a few ms after the direct sound.
    tail[: int(0.003 * sr)] = 0.0
    ir = tail / np.sqrt(np.sum(tail**2))
    ir[0] += 0.7  # direct-to-reverberant energy ratio ~ -3 dB
    return (ir / np.sqrt(np.sum(ir**2))).astype(np.float32)


def reverb(x: np.ndarray, sr: int, rng: Rng, rt60_s: float = 0.6) -> np.ndarray:
    ir = room_impulse_response(sr, rng, rt60_s)
    return signal.fftconvolve(x, ir)[: x.size].astype(np.float32)


def resample_speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster, tempo and pitch together (vinyl / radio style)."""
    ratio = Fraction(1.0 / factor).limit_denominator(1000)
    return signal.resample_poly(x, ratio.numerator, ratio.denominator).astype(np.float32)


def _run_ffmpeg_filter(x: np.ndarray, sr: int, af: str) -> np.ndarray:
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]
    cmd += ["-f", "f32le", "-ar", str(sr), "-ac", "1", "-i", "pipe:0", "-af", af]
    cmd += ["-f", "f32le", "-ar", str(sr), "-ac", "1", "pipe:1"]
    proc = subprocess.run(cmd, input=x.astype("<f4").tobytes(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg -af {af!r} failed: {proc.stderr.decode(errors='replace')}")
    return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)


@cache
def ffmpeg_filters() -> frozenset[str]:
    out = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-filters"], capture_output=True, check=True
    ).stdout.decode(errors="replace")
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and "->" in parts[2]:
            names.add(parts[1])
    return frozenset(names)


def pitch_shift(x: np.ndarray, sr: int, semitones: float) -> np.ndarray:
    """Change pitch, keep tempo and length."""
    r = 2.0 ** (semitones / 12.0)
    if "rubberband" in ffmpeg_filters():
        # rubberband compensates its own latency: output stays sample-aligned.
        return _run_ffmpeg_filter(x, sr, f"rubberband=pitch={r:.8f}")
    # Fallback: resample to change pitch+tempo, then undo the tempo. atempo
    # shifts content by ~30 ms, which offset tolerances must absorb.
    return _run_ffmpeg_filter(x, sr, f"asetrate={sr * r:.3f},aresample={sr},atempo={1.0 / r:.8f}")


def time_stretch(x: np.ndarray, sr: int, factor: float) -> np.ndarray:
    """Play ``factor`` times faster while keeping pitch."""
    if "rubberband" in ffmpeg_filters():
        return _run_ffmpeg_filter(x, sr, f"rubberband=tempo={factor:.8f}")
    return _run_ffmpeg_filter(x, sr, f"atempo={factor:.8f}")


def mp3_encode(x: np.ndarray, sr: int, bitrate: str = "32k") -> bytes:
    """The MP3 file libmp3lame (mono, CBR) makes of `x`.

    A seekable file, not a pipe: only then does ffmpeg write the LAME/Xing
    header with encoder delay and padding, which the decoder uses to trim the
    priming samples. Through a pipe the output is ~70 ms late and longer.
    """
    with tempfile.TemporaryDirectory(prefix="earmark-mp3-") as tmp:
        mp3 = Path(tmp) / "q.mp3"
        enc = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]
        enc += ["-f", "f32le", "-ar", str(sr), "-ac", "1", "-i", "pipe:0"]
        enc += ["-c:a", "libmp3lame", "-b:a", bitrate, "-ac", "1", "-y", str(mp3)]
        proc = subprocess.run(enc, input=x.astype("<f4").tobytes(), capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"mp3 encode failed: {proc.stderr.decode(errors='replace')}")
        return mp3.read_bytes()


def mp3_roundtrip(x: np.ndarray, sr: int, bitrate: str = "32k") -> np.ndarray:
    """Encode with libmp3lame (`mp3_encode`) and decode again."""
    with tempfile.TemporaryDirectory(prefix="earmark-mp3-") as tmp:
        mp3 = Path(tmp) / "q.mp3"
        mp3.write_bytes(mp3_encode(x, sr, bitrate))
        return decode_audio(mp3, sr)


# -------------------------------------------------------------------- conditions

# Signal transforms run on the excerpt WITH margins; noise is added after the
# margins are trimmed, scaled against exactly the audio the matcher will see.
Transform = Callable[[np.ndarray, int, Rng], np.ndarray]
NoiseFn = Callable[[int, int, Rng, "NoiseContext"], np.ndarray]


@dataclass(frozen=True)
class NoiseContext:
    # Excerpts of tracks NOT in the catalog (and not the query's own track).
    babble_pool: Sequence[np.ndarray] = ()


@dataclass(frozen=True)
class Condition:
    name: str
    transforms: tuple[Transform, ...] = ()
    # Playback-rate factor: original seconds consumed per query second.
    speed: float = 1.0
    pitch_semitones: float = 0.0
    noise: NoiseFn | None = None
    snr_db: float | None = None
    # Applied to the noise before mixing (e.g. the phone band for `room`).
    noise_filter: Transform | None = None
    needs_ffmpeg: bool = False

    def apply(
        self,
        excerpt: np.ndarray,
        sr: int,
        rng: Rng,
        length: int,
        margin: int,
        ctx: NoiseContext = NoiseContext(),
    ) -> np.ndarray:
        """Degrade ``excerpt`` = margin + length*speed + margin original samples."""
        y = excerpt
        for fn in self.transforms:
            y = fn(y, sr, rng)
        start = round(margin / self.speed)
        y = y[start : start + length]
        if y.size < length:  # resampler rounding at the very end
            y = np.pad(y, (0, length - y.size))
        if self.noise is not None and self.snr_db is not None:
            n = self.noise(length, sr, rng, ctx)
            if self.noise_filter is not None:
                n = self.noise_filter(n, sr, rng)
            y = mix_at_snr(y, n, self.snr_db)
        return y.astype(np.float32)


def _pink(n: int, sr: int, rng: Rng, ctx: NoiseContext) -> np.ndarray:
    return pink_noise(n, rng)


def babble_noise(n: int, rng: Rng, pool: Sequence[np.ndarray]) -> np.ndarray:
    """Sum of 4-6 equal-loudness excerpts of unrelated tracks."""
    usable = [p for p in pool if p.size >= n]
    if len(usable) < 4:
        raise ValueError(f"babble needs >= 4 pool excerpts of {n} samples, got {len(usable)}")
    k = int(rng.integers(4, min(6, len(usable)) + 1))
    out = np.zeros(n, dtype=np.float64)
    for i in rng.choice(len(usable), size=k, replace=False):
        src = usable[int(i)]
        start = int(rng.integers(0, src.size - n + 1))
        seg = src[start : start + n].astype(np.float64)
        out += seg / (rms(seg) or 1.0)
    return (out / (rms(out) or 1.0)).astype(np.float32)


def _babble(n: int, sr: int, rng: Rng, ctx: NoiseContext) -> np.ndarray:
    return babble_noise(n, rng, ctx.babble_pool)


def _phone_band(x: np.ndarray, sr: int, rng: Rng) -> np.ndarray:
    return bandpass(x, sr)


def _reverb(x: np.ndarray, sr: int, rng: Rng) -> np.ndarray:
    return reverb(x, sr, rng)


def _mp3(x: np.ndarray, sr: int, rng: Rng) -> np.ndarray:
    return mp3_roundtrip(x, sr)


def _speed(factor: float) -> Transform:
    return lambda x, sr, rng: resample_speed(x, factor)


def _pitch(semitones: float) -> Transform:
    return lambda x, sr, rng: pitch_shift(x, sr, semitones)


def _tempo(factor: float) -> Transform:
    return lambda x, sr, rng: time_stretch(x, sr, factor)


def default_conditions() -> list[Condition]:
    conds = [Condition("clean")]
    for snr in (10, 5, 0):
        conds.append(Condition(f"pink_{snr}db", noise=_pink, snr_db=snr))
    for snr in (10, 5, 0):
        conds.append(Condition(f"babble_{snr}db", noise=_babble, snr_db=snr))
    # Phone held up in a room: reverberant music, band-limited by the phone,
    # with room noise that went through the same band-pass (SNR is in-band).
    conds.append(
        Condition(
            "room",
            transforms=(_reverb, _phone_band),
            noise=_pink,
            snr_db=10,
            noise_filter=_phone_band,
        )
    )
    conds.append(Condition("mp3_32k", transforms=(_mp3,), needs_ffmpeg=True))
    for pct in (-5, -2, 2, 5):
        f = 1 + pct / 100
        conds.append(Condition(f"speed_{pct:+d}pct", transforms=(_speed(f),), speed=f))
    for st in (-1, 1):
        conds.append(
            Condition(
                f"pitch_{st:+d}st", transforms=(_pitch(st),), pitch_semitones=st, needs_ffmpeg=True
            )
        )
    for pct in (-5, 5):
        f = 1 + pct / 100
        conds.append(
            Condition(f"tempo_{pct:+d}pct", transforms=(_tempo(f),), speed=f, needs_ffmpeg=True)
        )
    return conds


def conditions_by_name(names: Sequence[str] | None = None) -> list[Condition]:
    conds = default_conditions()
    if names is None:
        return conds
    known = {c.name: c for c in conds}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"unknown conditions {missing}; known: {sorted(known)}")
    return [known[n] for n in names]


# --------------------------------------------------------------------- queries


def _stable_int(text: str) -> int:
    # Python's hash() is salted per process; crc32 is stable across runs.
    return zlib.crc32(text.encode())


def split_catalog(
    tracks: Sequence[CorpusTrack], seed: int, held_out_fraction: float = HELD_OUT_FRACTION
) -> tuple[list[CorpusTrack], list[CorpusTrack]]:
    """Deterministic ~80/20 split, stratified by package.

    Stratifying keeps every package (relevance label) on both sides, and
    per-package shuffling means adding a package does not reshuffle the others.
    """
    by_pkg: dict[str, list[CorpusTrack]] = {}
    for t in sorted(tracks, key=lambda t: t.track_id):
        by_pkg.setdefault(t.package, []).append(t)
    catalog: list[CorpusTrack] = []
    held_out: list[CorpusTrack] = []
    for pkg, ts in sorted(by_pkg.items()):
        rng = np.random.default_rng([seed, _stable_int(pkg)])
        order = rng.permutation(len(ts))
        n_held = round(len(ts) * held_out_fraction) if len(ts) > 1 else 0
        held_idx = set(order[:n_held].tolist())
        for i, t in enumerate(ts):
            (held_out if i in held_idx else catalog).append(t)
    catalog.sort(key=lambda t: t.track_id)
    held_out.sort(key=lambda t: t.track_id)
    return catalog, held_out


@dataclass(frozen=True)
class Query:
    query_id: str
    track_path: Path
    track_id: str
    package: str
    condition: str
    length_s: float
    # Start of the excerpt in the ORIGINAL track; query time t maps to original
    # time offset_s + t * speed.
    offset_s: float
    speed: float
    pitch_semitones: float
    snr_db: float | None
    # The track repeats with this period: offset_s is only defined modulo it.
    loop_period_s: float | None
    # True for excerpts of held-out tracks: the correct answer is "no match".
    negative: bool
    sr: int
    audio: np.ndarray = field(repr=False, compare=False)

    def manifest_row(self, wav: str) -> dict[str, object]:
        return {
            "id": self.query_id,
            "wav": wav,
            "track_id": self.track_id,
            "track_path": str(self.track_path),
            "package": self.package,
            "condition": self.condition,
            "length_s": self.length_s,
            "offset_s": round(self.offset_s, 6),
            "speed": self.speed,
            "pitch_semitones": self.pitch_semitones,
            "snr_db": self.snr_db,
            "loop_period_s": self.loop_period_s,
            "negative": self.negative,
            "sr": self.sr,
        }


def _pick_offset(
    audio: np.ndarray, sr: int, span_s: float, rng: Rng, attempts: int = 20
) -> float | None:
    """Random excerpt start with room for ``span_s``, avoiding near-silence."""
    dur = audio.size / sr
    if dur < span_s:
        return None
    best: tuple[float, float] | None = None
    for _ in range(attempts):
        off = float(rng.uniform(0.0, dur - span_s))
        # Snap to the sample grid so offset_s is exact for the decoded audio.
        off = round(off * sr) / sr
        seg = audio[round(off * sr) : round((off + span_s) * sr)]
        level = 20 * math.log10(rms(seg) + 1e-12)
        if level >= MIN_EXCERPT_DBFS:
            return off
        if best is None or level > best[1]:
            best = (off, level)
    return best[0] if best else None


def _with_margins(audio: np.ndarray, start: int, n: int, margin: int) -> np.ndarray:
    """audio[start - margin : start + n + margin], zero-padded outside the track."""
    lo, hi = start - margin, start + n + margin
    seg = audio[max(lo, 0) : min(hi, audio.size)]
    return np.pad(seg, (max(0, -lo), max(0, hi - audio.size))).astype(np.float32)


def _limit_peak(x: np.ndarray) -> np.ndarray:
    # Noise mixing can exceed full scale; scale down rather than clip, since
    # clipping would be an extra, unlabelled distortion.
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return (x * (PEAK_LIMIT / peak)).astype(np.float32) if peak > PEAK_LIMIT else x


def build_babble_pool(
    tracks: Sequence[CorpusTrack],
    sr: int = DEFAULT_SR,
    seed: int = 0,
    chunks_per_track: int = 3,
    chunk_s: float = 15.0,
    decoder: Callable[[Path, int], np.ndarray] = decode_audio,
) -> dict[str, list[np.ndarray]]:
    """A few random chunks per track (keyed by track_id), to keep memory bounded."""
    pool: dict[str, list[np.ndarray]] = {}
    for t in tracks:
        audio = decoder(t.path, sr)
        rng = np.random.default_rng([seed, _stable_int("babble"), _stable_int(t.track_id)])
        chunks = []
        span = min(chunk_s, audio.size / sr)
        for _ in range(chunks_per_track):
            off = _pick_offset(audio, sr, span, rng)
            if off is not None:
                i = round(off * sr)
                chunks.append(audio[i : i + round(span * sr)].copy())
        pool[t.track_id] = chunks
    return pool


def _queries_for_track(
    track: CorpusTrack,
    audio: np.ndarray,
    *,
    negative: bool,
    lengths: Sequence[float],
    conditions: Sequence[Condition],
    per_track: int,
    seed: int,
    sr: int,
    babble_pool: dict[str, list[np.ndarray]],
) -> list[Query]:
    ctx = NoiseContext(
        babble_pool=[
            c for tid, cs in sorted(babble_pool.items()) if tid != track.track_id for c in cs
        ]
    )
    max_speed = max(c.speed for c in conditions)
    margin = round(MARGIN_S * sr)
    out: list[Query] = []
    tid = _stable_int(track.track_id)
    for length_s in lengths:
        for k in range(per_track):
            # One excerpt per (length, k), shared by all conditions, so
            # conditions can be compared on identical musical content.
            rng = np.random.default_rng([seed, tid, round(length_s * 1000), k])
            off = _pick_offset(audio, sr, length_s * max_speed, rng)
            if off is None:
                continue
            start = round(off * sr)
            n_out = round(length_s * sr)
            for cond in conditions:
                n_in = round(length_s * cond.speed * sr)
                excerpt = _with_margins(audio, start, n_in, margin)
                crng = np.random.default_rng(
                    [seed, tid, round(length_s * 1000), k, _stable_int(cond.name)]
                )
                y = _limit_peak(cond.apply(excerpt, sr, crng, n_out, margin, ctx))
                out.append(
                    Query(
                        query_id="",  # assigned once the whole list is ordered
                        track_path=track.path,
                        track_id=track.track_id,
                        package=track.package,
                        condition=cond.name,
                        length_s=float(length_s),
                        offset_s=start / sr,
                        speed=cond.speed,
                        pitch_semitones=cond.pitch_semitones,
                        snr_db=cond.snr_db,
                        loop_period_s=track.loop_period_s,
                        negative=negative,
                        sr=sr,
                        audio=y,
                    )
                )
    return out


def build_queries(
    catalog: Sequence[CorpusTrack],
    lengths: Sequence[float] = DEFAULT_LENGTHS,
    conditions: Sequence[Condition] | None = None,
    per_track: int = 1,
    seed: int = 0,
    *,
    held_out: Sequence[CorpusTrack] = (),
    babble_tracks: Sequence[CorpusTrack] | None = None,
    sr: int = DEFAULT_SR,
    decoder: Callable[[Path, int], np.ndarray] = decode_audio,
    progress: Callable[[str], None] | None = None,
) -> list[Query]:
    """Positive queries from ``catalog`` and negative queries from ``held_out``.

    Negatives use the same lengths, conditions and per_track as positives.
    Babble noise is drawn from ``babble_tracks`` (default: ``held_out``), which
    must not be in the catalog, so it never contains music that a matcher could
    legitimately find. ``decoder`` is
    injectable so tests can run on synthetic audio.
    """
    conds = list(conditions) if conditions is not None else default_conditions()
    babble_pool: dict[str, list[np.ndarray]] = {}
    if any(c.noise is _babble for c in conds):
        pool_tracks = held_out if babble_tracks is None else babble_tracks
        babble_pool = build_babble_pool(pool_tracks, sr, seed, decoder=decoder)
    queries: list[Query] = []
    jobs = [(t, False) for t in catalog] + [(t, True) for t in held_out]
    for i, (track, negative) in enumerate(jobs, 1):
        t0 = time.monotonic()
        audio = decoder(track.path, sr)
        qs = _queries_for_track(
            track,
            audio,
            negative=negative,
            lengths=lengths,
            conditions=conds,
            per_track=per_track,
            seed=seed,
            sr=sr,
            babble_pool=babble_pool,
        )
        queries.extend(qs)
        if progress is not None:
            kind = "neg" if negative else "pos"
            progress(
                f"[{i}/{len(jobs)}] {kind} {track.track_id}: {len(qs)} queries "
                f"({time.monotonic() - t0:.1f} s)"
            )
    return [_renamed(q, f"{'neg' if q.negative else 'pos'}-{i:06d}") for i, q in enumerate(queries)]


def _renamed(q: Query, query_id: str) -> Query:
    return Query(**{**{f: getattr(q, f) for f in q.__dataclass_fields__}, "query_id": query_id})


# ------------------------------------------------------------------------- CLI


def select_query_tracks(
    catalog: list[CorpusTrack], held_out: list[CorpusTrack], limit: int | None, seed: int
) -> tuple[list[CorpusTrack], list[CorpusTrack]]:
    """With `limit`, a random N catalog tracks and N/4 held-out ones to query.

    Chosen after the split, so that a limit never moves a track to the other side;
    a random subset rather than the first N, which would be one package.
    """
    if limit is None:
        return catalog, held_out
    rng = np.random.default_rng([seed, _stable_int("limit")])
    q_cat = sorted(
        (catalog[i] for i in rng.permutation(len(catalog))[:limit]), key=lambda t: t.track_id
    )
    n_neg = max(1, math.ceil(limit / 4))
    q_held = sorted(
        (held_out[i] for i in rng.permutation(len(held_out))[:n_neg]), key=lambda t: t.track_id
    )
    return q_cat, q_held


@dataclass(frozen=True)
class BenchPlan:
    """bench.run's query set, from a corpus: one definition for every tool that
    must measure the same queries (bench.run, bench.audfprint_compare)."""

    catalog: list[CorpusTrack]
    held_out: list[CorpusTrack]
    query_catalog: list[CorpusTrack]
    query_held_out: list[CorpusTrack]
    conditions: list[Condition]

    @classmethod
    def of(
        cls,
        tracks: list[CorpusTrack],
        seed: int,
        limit: int | None = None,
        condition_names: Sequence[str] | None = None,
    ) -> BenchPlan:
        catalog, held_out = split_catalog(tracks, seed)
        q_catalog, q_held = select_query_tracks(catalog, held_out, limit, seed)
        return cls(catalog, held_out, q_catalog, q_held, conditions_by_name(condition_names))

    def queries(
        self,
        lengths: Sequence[float],
        per_track: int,
        seed: int,
        progress: Callable[[str], None] | None = None,
    ) -> list[Query]:
        # Babble comes from the whole held-out set even when negatives are limited.
        return build_queries(
            self.query_catalog,
            lengths,
            self.conditions,
            per_track,
            seed,
            held_out=self.query_held_out,
            babble_tracks=self.held_out,
            sr=DEFAULT_SR,
            progress=progress,
        )


def _track_row(t: CorpusTrack) -> dict[str, object]:
    return {
        "track_id": t.track_id,
        "path": str(t.path),
        "package": t.package,
        "duration_s": round(t.duration_s, 3),
        "loop_period_s": t.loop_period_s,
    }


def summary_table(queries: Sequence[Query]) -> str:
    lengths = sorted({q.length_s for q in queries})
    conds: list[str] = []
    for q in queries:
        if q.condition not in conds:
            conds.append(q.condition)
    counts: dict[tuple[str, float, bool], int] = {}
    for q in queries:
        key = (q.condition, q.length_s, q.negative)
        counts[key] = counts.get(key, 0) + 1
    head = f"{'condition':<16}" + "".join(f"{f'{x:g}s':>10}" for x in lengths)
    lines = [head + "   (positives/negatives)"]
    for c in conds:
        cells = "".join(
            f"{f'{counts.get((c, x, False), 0)}/{counts.get((c, x, True), 0)}':>10}"
            for x in lengths
        )
        lines.append(f"{c:<16}{cells}")
    n_pos = sum(not q.negative for q in queries)
    lines.append(
        f"total: {len(queries)} queries ({n_pos} positive, {len(queries) - n_pos} negative)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.degrade",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS_DIR)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--limit",
        type=int,
        default=None,
        help="positives from at most N catalog tracks (negatives: N/4 held-out)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sr", type=int, default=DEFAULT_SR)
    ap.add_argument("--per-track", type=int, default=1)
    ap.add_argument(
        "--lengths", type=lambda s: [float(x) for x in s.split(",")], default=list(DEFAULT_LENGTHS)
    )
    ap.add_argument(
        "--conditions",
        type=lambda s: s.split(","),
        default=None,
        help="comma-separated subset of: " + ",".join(c.name for c in default_conditions()),
    )
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    tracks = list_corpus(args.corpus)
    # Split the full corpus so that --limit never changes which side a track is on.
    catalog, held_out = split_catalog(tracks, args.seed)
    q_catalog, q_held = select_query_tracks(catalog, held_out, args.limit, args.seed)
    conds = conditions_by_name(args.conditions)
    log(
        f"corpus: {len(tracks)} tracks -> catalog {len(catalog)}, held-out {len(held_out)}; "
        f"queries from {len(q_catalog)} catalog + {len(q_held)} held-out tracks; "
        f"rubberband={'yes' if 'rubberband' in ffmpeg_filters() else 'no'}"
    )
    # Babble comes from the whole held-out set even when negatives are limited.
    queries = build_queries(
        q_catalog,
        args.lengths,
        conds,
        args.per_track,
        args.seed,
        held_out=q_held,
        babble_tracks=held_out,
        sr=args.sr,
        progress=log,
    )

    wav_dir = args.out / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    with (args.out / "queries.jsonl").open("w") as f:
        for q in queries:
            name = f"wav/{q.query_id}.wav"
            wavfile.write(args.out / name, q.sr, q.audio)
            f.write(json.dumps(q.manifest_row(name)) + "\n")
    for fname, ts in (("catalog.jsonl", catalog), ("held_out.jsonl", held_out)):
        with (args.out / fname).open("w") as f:
            f.writelines(json.dumps(_track_row(t)) + "\n" for t in ts)
    print(summary_table(queries))
    print(
        f"wrote {args.out}/queries.jsonl, catalog.jsonl ({len(catalog)} tracks), "
        f"held_out.jsonl ({len(held_out)} tracks)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
