"""Training data: which tracks, decoded once into memory, and augmented pairs made locally.

Split (documented in docs/neural.md): the benchmark's own split
(`bench.degrade.split_catalog`, seed 0) puts ~80 % of the corpus in the catalog
and holds ~20 % out as negatives. Training uses only the catalog tracks whose
stable hash (crc32 of the track id) is even, i.e. about half of the catalog,
plus generated songs (`bench.synthetic.song`). The odd half of the catalog is
never trained on: the in-training validation and the evaluation of "unseen"
tracks use it. The held-out 20 % is never read here.

A batch is a pure function of (seed, step): the same seed gives the same
batches in the same order, also after a resume and with any number of loader
workers.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import signal

from bench.corpus import CorpusTrack, decode_audio, list_corpus
from bench.degrade import mp3_roundtrip, pink_noise, rms, split_catalog
from bench.synthetic import song
from earmark_fingerprint import neural_frontend as fe

SR: int = fe.SAMPLE_RATE_HZ
SPLIT_SEED = 0  # the benchmark's default split seed: the same catalog / held-out sides
SYNTHETIC_SONGS = 40
SYNTHETIC_SEED_BASE = 900_000  # far from the small seeds tests and the demo use
SYNTHETIC_SECONDS = 30.0
# Low-bitrate MP3 versions stored next to the clean audio, sample-aligned.
CODEC_BITRATES = ("16k", "24k")
# Context decoded before a positive view so that reverb tails come from real audio.
PREROLL = SR // 2
# Excerpts are drawn this far from both ends so jitter, speed and preroll fit.
EDGE = SR * 2
SILENCE_DBFS = -45.0

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float32]


def is_training_track(track_id: str) -> bool:
    """The deterministic half of the catalog that training may read."""
    return zlib.crc32(track_id.encode()) % 2 == 0


@dataclass(frozen=True)
class Split:
    train: list[CorpusTrack]
    unseen_catalog: list[CorpusTrack]
    held_out: list[CorpusTrack]


def corpus_split(corpus: Path) -> Split:
    catalog, held_out = split_catalog(list_corpus(corpus), SPLIT_SEED)
    train = [t for t in catalog if is_training_track(t.track_id)]
    unseen = [t for t in catalog if not is_training_track(t.track_id)]
    return Split(train, unseen, held_out)


def _to_int16(x: npt.ArrayLike) -> Int16Array:
    return np.round(np.clip(np.asarray(x, np.float32), -1.0, 1.0) * 32767).astype(np.int16)


@dataclass
class AudioSet:
    """Clean and codec-degraded audio per track, int16 at 8 kHz, aligned sample by sample."""

    names: list[str]
    clean: list[Int16Array]
    coded: list[list[Int16Array]]

    @property
    def hours(self) -> float:
        samples = sum(int(c.size) for c in self.clean)
        return samples / SR / 3600

    def save(self, path: Path) -> None:
        arrays: dict[str, Int16Array] = {}
        for i, (c, cs) in enumerate(zip(self.clean, self.coded, strict=True)):
            arrays[f"c{i}"] = c
            for j, x in enumerate(cs):
                arrays[f"m{i}_{j}"] = x
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, names=np.array(self.names), **arrays)  # type: ignore[arg-type]
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> AudioSet:
        with np.load(path) as z:
            names = [str(n) for n in z["names"]]
            clean = [z[f"c{i}"] for i in range(len(names))]
            coded = [
                [z[f"m{i}_{j}"] for j in range(len(CODEC_BITRATES))] for i in range(len(names))
            ]
        return cls(names, clean, coded)


def _coded_versions(x: FloatArray) -> list[Int16Array]:
    out = []
    for rate in CODEC_BITRATES:
        y = mp3_roundtrip(x, SR, rate)[: x.size]
        out.append(_to_int16(np.pad(y, (0, x.size - y.size))))
    return out


def build_audio_set(
    tracks: Sequence[CorpusTrack],
    synthetic: int,
    cache_dir: Path,
    log: Callable[[str], None] = print,
) -> AudioSet:
    """Decode (or load from the cache) every track once, with its MP3 versions."""
    key = hashlib.sha256(
        json.dumps([[t.track_id for t in tracks], synthetic, CODEC_BITRATES]).encode()
    ).hexdigest()[:16]
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"audio-{key}.npz"
    if path.exists():
        log(f"audio: loading the decoded set from {path}")
        return AudioSet.load(path)
    names: list[str] = []
    clean: list[Int16Array] = []
    coded: list[list[Int16Array]] = []
    for i, t in enumerate(tracks, 1):
        x = decode_audio(t.path, SR)
        if t.loop_period_s:
            # One period only: later repeats would be false negatives in the loss.
            x = x[: round(t.loop_period_s * SR)]
        names.append(t.track_id)
        clean.append(_to_int16(x))
        coded.append(_coded_versions(x))
        log(f"audio: [{i}/{len(tracks)}] {t.track_id} {x.size / SR:.0f} s")
    for k in range(synthetic):
        x = (song(SYNTHETIC_SEED_BASE + k, SYNTHETIC_SECONDS, SR) * 0.5).astype(np.float32)
        names.append(f"synthetic/{SYNTHETIC_SEED_BASE + k}")
        clean.append(_to_int16(x))
        coded.append(_coded_versions(x))
    audio = AudioSet(names, clean, coded)
    audio.save(path)
    log(f"audio: {len(names)} tracks, {audio.hours:.2f} h, cached in {path}")
    return audio


# ------------------------------------------------------------------ augmentation


@dataclass(frozen=True)
class AugmentConfig:
    jitter_s: float = 0.125
    p_speed: float = 0.35
    max_speed_change: float = 0.05
    p_codec: float = 0.3
    p_reverb: float = 0.5
    rt60_s: tuple[float, float] = (0.15, 1.0)
    p_bandpass: float = 0.45
    p_noise: float = 0.85
    snr_db: tuple[float, float] = (0.0, 12.0)
    p_babble: float = 0.35  # of the noisy views
    p_eq: float = 0.3  # random spectral tilt (cheap speakers, microphones)
    # Pitch shift with the tempo kept, made in the frontend by scaling the mel
    # band edges (neural_frontend.mel_matrix); 0 leaves the batches of runs made
    # before it existed unchanged.
    p_pitch: float = 0.0
    max_pitch_semitones: float = 1.2


# Pitch shifts are drawn on this grid (semitones) so the frontend's cached
# filter banks stay few.
PITCH_STEP_SEMITONES = 0.05


def _bandpass_bank() -> list[npt.NDArray[np.float64]]:
    """A fixed set of phone / small-speaker responses (designing per sample is slow)."""
    bank = []
    for lo in (150.0, 250.0, 300.0, 400.0, 550.0):
        for hi in (2400.0, 3000.0, 3400.0, 3800.0):
            bank.append(signal.butter(4, [lo, hi], btype="bandpass", fs=SR, output="sos"))
    return bank


_BANDPASS = _bandpass_bank()
# Air and walls damp highs faster than lows (bench.degrade's room IR low-passes at
# 4 kHz, which is Nyquist here, so the room model is re-made for 8 kHz).
_ROOM_LOWPASS = signal.butter(2, 3000.0, btype="lowpass", fs=SR, output="sos")


def room_impulse_response(rng: np.random.Generator, rt60_s: float) -> FloatArray:
    """Synthetic room: direct path, a few early reflections, exponentially decaying tail."""
    n = int(rt60_s * 1.2 * SR)
    t = np.arange(n) / SR
    envelope = np.exp(-math.log(1000.0) * t / rt60_s)  # -60 dB after rt60_s
    tail = signal.sosfilt(_ROOM_LOWPASS, rng.standard_normal(n)) * envelope
    tail[: int(rng.uniform(0.002, 0.01) * SR)] = 0.0
    ir = tail / np.sqrt(np.sum(tail**2))
    for _ in range(int(rng.integers(0, 5))):
        ir[int(rng.uniform(0.003, 0.05) * SR)] += rng.uniform(-0.5, 0.5)
    ir[0] += rng.uniform(0.3, 1.5)  # direct-to-reverberant ratio, about -10 .. +4 dB
    result: FloatArray = (ir / np.sqrt(np.sum(ir**2))).astype(np.float32)
    return result


def coloured_noise(n: int, rng: np.random.Generator) -> FloatArray:
    """Unit-RMS noise with power ~ f^slope, slope in [-2, 0.5] (brown .. pink .. ~white)."""
    slope = rng.uniform(-2.0, 0.5)
    if abs(slope + 1.0) < 0.25:
        return pink_noise(n, rng)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    spec *= f ** (slope / 2.0)
    spec[0] = 0.0
    out = np.fft.irfft(spec, n)
    result: FloatArray = (out / (rms(out) or 1.0)).astype(np.float32)
    return result


def _tilt(x: FloatArray, rng: np.random.Generator) -> FloatArray:
    # First-order shelf-ish tilt: mix the signal with its first difference.
    a = rng.uniform(-0.6, 0.6)
    y = x.copy()
    y[1:] += a * (x[1:] - x[:-1])
    return y


class PairMaker:
    """Anchor (clean) and positive (degraded, time-jittered) views of the same moment."""

    def __init__(self, audio: AudioSet, augment: AugmentConfig = AugmentConfig()) -> None:
        self.audio = audio
        self.aug = augment
        usable = [i for i, c in enumerate(audio.clean) if c.size > 2 * EDGE + fe.SEGMENT_SAMPLES]
        self.tracks = np.array(usable)
        lengths = np.array([audio.clean[i].size for i in usable], dtype=np.float64)
        # Sample tracks by length so every second of music is equally likely.
        self.weights = lengths / lengths.sum()

    def _pick(self, rng: np.random.Generator) -> tuple[int, int]:
        best: tuple[int, int] | None = None
        for _ in range(6):
            track = int(rng.choice(self.tracks, p=self.weights))
            clean = self.audio.clean[track]
            start = int(rng.integers(EDGE, clean.size - EDGE - fe.SEGMENT_SAMPLES))
            seg = clean[start : start + fe.SEGMENT_SAMPLES].astype(np.float32) / 32768
            if 20 * math.log10(rms(seg) + 1e-9) > SILENCE_DBFS:
                return track, start
            best = best or (track, start)
        assert best is not None
        return best

    def _babble(self, n: int, track: int, rng: np.random.Generator) -> FloatArray:
        out = np.zeros(n, dtype=np.float64)
        for _ in range(int(rng.integers(3, 7))):
            other = int(rng.choice(self.tracks, p=self.weights))
            if other == track:
                continue
            src = self.audio.clean[other]
            s = int(rng.integers(0, src.size - n))
            seg = src[s : s + n].astype(np.float64)
            out += seg / (rms(seg) or 1.0)
        return (out / (rms(out) or 1.0)).astype(np.float32)

    def positive(self, track: int, start: int, rng: np.random.Generator) -> FloatArray:
        a = self.aug
        n = fe.SEGMENT_SAMPLES
        source = self.audio.clean[track]
        if rng.random() < a.p_codec:
            source = self.audio.coded[track][int(rng.integers(len(CODEC_BITRATES)))]
        speed = 1.0
        if rng.random() < a.p_speed:
            speed = 1.0 + rng.uniform(-a.max_speed_change, a.max_speed_change)
        # View sample j (after the preroll) plays original sample centre + j * speed.
        centre = start + rng.uniform(-a.jitter_s, a.jitter_s) * SR
        positions = centre + (np.arange(-PREROLL, n) * speed)
        lo = math.floor(positions[0])
        hi = math.ceil(positions[-1]) + 2
        chunk = source[lo:hi].astype(np.float32) / 32768
        x = np.interp(positions - lo, np.arange(chunk.size), chunk).astype(np.float32)
        if rng.random() < a.p_reverb:
            ir = room_impulse_response(rng, float(rng.uniform(*a.rt60_s)))
            x = signal.fftconvolve(x, ir)[: x.size].astype(np.float32)
        x = x[PREROLL:]
        band = None
        if rng.random() < a.p_bandpass:
            band = _BANDPASS[int(rng.integers(len(_BANDPASS)))]
            x = signal.sosfilt(band, x).astype(np.float32)
        if rng.random() < a.p_eq:
            x = _tilt(x, rng)
        if rng.random() < a.p_noise:
            if rng.random() < a.p_babble:
                noise = self._babble(n, track, rng)
            else:
                noise = coloured_noise(n, rng)
            if band is not None and rng.random() < 0.5:
                noise = signal.sosfilt(band, noise).astype(np.float32)
            snr = rng.uniform(*a.snr_db)
            gain = rms(x) / (rms(noise) or 1.0) * 10.0 ** (-snr / 20.0)
            x = x + gain * noise
        view: FloatArray = (x * 10.0 ** (rng.uniform(-20, 6) / 20)).astype(np.float32)
        return view

    def anchor(self, track: int, start: int) -> FloatArray:
        seg = self.audio.clean[track][start : start + fe.SEGMENT_SAMPLES]
        return np.asarray(seg, dtype=np.float32) / np.float32(32768)

    def pitch_scale(self, rng: np.random.Generator) -> float:
        """Frontend frequency scale of a positive view: 1.0, or a pitch shift on a grid."""
        a = self.aug
        # Short-circuit: with p_pitch = 0 no number is drawn and older runs replay exactly.
        if a.p_pitch <= 0 or rng.random() >= a.p_pitch:
            return 1.0
        steps = round(a.max_pitch_semitones / PITCH_STEP_SEMITONES)
        semitones = int(rng.integers(-steps, steps + 1)) * PITCH_STEP_SEMITONES
        return float(2.0 ** (semitones / 12.0))

    def batch(self, seed: int, step: int, pairs: int) -> tuple[FloatArray, FloatArray]:
        """Log-mel of ``pairs`` anchors and their positives, the same for the same (seed, step)."""
        rng = np.random.default_rng([seed, step])
        anchors = np.empty((pairs, fe.SEGMENT_SAMPLES), dtype=np.float32)
        positives = np.empty_like(anchors)
        scales = np.ones(pairs)
        for i in range(pairs):
            track, start = self._pick(rng)
            anchors[i] = self.anchor(track, start)
            positives[i] = self.positive(track, start, rng)
            scales[i] = self.pitch_scale(rng)
        mel_positives = np.empty((pairs, fe.N_MELS, fe.SEGMENT_FRAMES), dtype=np.float32)
        for scale in np.unique(scales):
            # A view pitched up by s reads as the original under bands scaled by s,
            # so bands scaled by 1 / s make the clean view sound pitched up by s.
            sel = scales == scale
            mel_positives[sel] = fe.log_mel_batch(positives[sel], 1.0 / float(scale))
        return fe.log_mel_batch(anchors), mel_positives
