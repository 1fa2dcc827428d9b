"""Generated audio with a known tempo or key, for tests and the benchmark.

`drum_loop` plays kick, snare and hi-hat on a strict grid at `bpm`;
`chord_progression` plays a cadence (I-IV-V-I or i-iv-V-i, harmonic minor V)
with a bass line and a scale melody in a known key. Both are deterministic for
a given seed.
"""

from __future__ import annotations

import numpy as np

from .descriptors import NOTE_NAMES, SAMPLE_RATE_HZ

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR_HARMONIC = (0, 2, 3, 5, 7, 8, 11)


def _env(n: int, attack_s: float, decay_s: float, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    return np.minimum(1.0, t / max(attack_s, 1e-4)) * np.exp(-t / decay_s)


def _tone(freq: float, n: int, sr: int, harmonics: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / sr
    out = np.zeros(n)
    for h in range(1, harmonics + 1):
        if freq * h < sr / 2:
            out += np.sin(2 * np.pi * freq * h * t + rng.uniform(0, 2 * np.pi)) / h
    return out


def _place(buf: np.ndarray, sound: np.ndarray, at: int) -> None:
    end = min(buf.size, at + sound.size)
    if at < buf.size:
        buf[at:end] += sound[: end - at]


def drum_loop(
    bpm: float, seconds: float, *, seed: int = 0, sr: int = SAMPLE_RATE_HZ, swing: float = 0.0
) -> np.ndarray:
    """Kick on 1 and 3, snare on 2 and 4, hi-hat on eighths, a bass note per bar."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    out = np.zeros(n)
    beat = 60.0 / bpm
    kick_n = int(0.25 * sr)
    t = np.arange(kick_n) / sr
    f_sweep = 50 + 110 * np.exp(-t / 0.03)
    kick = np.sin(2 * np.pi * np.cumsum(f_sweep) / sr) * _env(kick_n, 0.001, 0.12, sr)
    snare_n = int(0.18 * sr)
    snare = (rng.standard_normal(snare_n) * 0.6 + _tone(190, snare_n, sr, 2, rng) * 0.4) * _env(
        snare_n, 0.001, 0.05, sr
    )
    hat_n = int(0.05 * sr)
    hat = np.diff(rng.standard_normal(hat_n + 1)) * _env(hat_n, 0.0005, 0.012, sr)
    root = 55.0 * 2 ** (rng.integers(0, 12) / 12)
    beats = int(seconds / beat) + 1
    for b in range(beats):
        at = int(b * beat * sr)
        if b % 2 == 0:
            _place(out, kick, at)
        else:
            _place(out, 0.7 * snare, at)
        if b % 4 == 0:
            bass_n = int(beat * 2 * sr)
            _place(out, 0.25 * _tone(root, bass_n, sr, 3, rng) * _env(bass_n, 0.01, beat, sr), at)
        for eighth in (0, 1):
            delay = eighth * beat / 2 * (1 + swing)
            _place(out, 0.25 * hat, int((b * beat + delay) * sr))
    out += 0.003 * rng.standard_normal(n)
    signal: np.ndarray = (0.5 * out / np.max(np.abs(out))).astype(np.float32)
    return signal


def chord_progression(
    tonic: str,
    scale: str,
    seconds: float,
    *,
    seed: int = 0,
    sr: int = SAMPLE_RATE_HZ,
    chord_s: float = 2.0,
) -> np.ndarray:
    """A cadence in `tonic` `scale` ("major"/"minor") with bass and a melody, repeated."""
    rng = np.random.default_rng(seed)
    pc = NOTE_NAMES.index(tonic)
    steps = MAJOR if scale == "major" else MINOR_HARMONIC
    # Scale degrees (0-based) of I-IV-V-I / i-iv-V-i, and a second cadence I-vi-ii-V.
    cadences = [(0, 3, 4, 0), (0, 5, 1, 4)] if scale == "major" else [(0, 3, 4, 0), (0, 5, 3, 4)]
    progression = cadences[seed % 2]
    n = int(seconds * sr)
    out = np.zeros(n)
    chord_n = int(chord_s * sr)
    base = 261.63 * 2 ** (pc / 12)  # tonic in octave 4

    def freq(degree: int, octave: int) -> float:
        semis = steps[degree % 7] + 12 * (degree // 7)
        return float(base * 2 ** (semis / 12 + octave))

    count = int(np.ceil(seconds / chord_s))
    for c in range(count):
        degree = progression[c % len(progression)]
        at = c * chord_n
        env = _env(chord_n, 0.02, chord_s * 0.8, sr)
        for third in (0, 2, 4):
            _place(out, 0.3 * _tone(freq(degree + third, 0), chord_n, sr, 5, rng) * env, at)
        _place(out, 0.4 * _tone(freq(degree, -2), chord_n, sr, 4, rng) * env, at)
        # Melody: four notes per chord from the chord and its passing tones.
        note_n = chord_n // 4
        for k in range(4):
            md = degree + int(rng.choice([0, 2, 4, 1, 7]))
            mel = 0.2 * _tone(freq(md, 1), note_n, sr, 3, rng) * _env(note_n, 0.01, 0.3, sr)
            _place(out, mel, at + k * note_n)
    out += 0.002 * rng.standard_normal(n)
    signal: np.ndarray = (0.5 * out / np.max(np.abs(out))).astype(np.float32)
    return signal
