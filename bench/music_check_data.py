"""Data for the music / mock-audio classifier: corpus excerpts and generated mocks.

Everything is float32 mono at 8 kHz (the rate ingest validates at). Mocks are
random variants of each kind a catalog should refuse; ``mock(kind, seed)`` is
deterministic per (kind, seed). Speech comes from a formant synthesiser here
and, when the ``espeak-ng`` program is installed, from espeak-ng (real
text-to-speech in many voices and languages).

Used by ``bench/music_check_train.py`` (fitting) and
``bench/music_check_bench.py`` (evaluation) with disjoint seeds and tracks.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable, Iterator

import numpy as np
from scipy.signal import lfilter, resample_poly

from bench import corpus, synthetic

SR = 8000
EXCERPT_S = 30.0
CACHE = corpus.DEFAULT_CORPUS_DIR.parent / "music_check"

Gen = Callable[[np.random.Generator, int], np.ndarray]


def _gain(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random level between -35 and -1 dBFS peak."""
    peak = float(np.abs(x).max()) or 1.0
    return (x / peak * 10 ** (rng.uniform(-35, -1) / 20)).astype(np.float32)


def _colored(n: int, slope_db_oct: float, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    f[0] = f[1]
    spec *= (f / 1000.0) ** (slope_db_oct / 6.02)
    return np.fft.irfft(spec, n)


def _slow_am(n: int, rng: np.random.Generator, depth: float) -> np.ndarray:
    t = np.arange(n) / SR
    rate = rng.uniform(0.1, 6.0)
    return 1 - depth * 0.5 * (1 + np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.3)))


def noise(rng: np.random.Generator, n: int) -> np.ndarray:
    variant = rng.integers(0, 6)
    if variant == 0:  # white
        x = rng.standard_normal(n) if rng.random() < 0.7 else rng.uniform(-1, 1, n)
    elif variant == 1:  # pink
        x = _colored(n, -3.0, rng)
    elif variant == 2:  # brown
        x = _colored(n, -6.0, rng)
    elif variant == 3:  # any slope
        x = _colored(n, rng.uniform(-8, 3), rng)
    elif variant == 4:  # band-limited
        lo = rng.uniform(50, 2000)
        hi = min(3900, lo * rng.uniform(1.5, 8))
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / SR)
        spec[(f < lo) | (f > hi)] = 0
        x = np.fft.irfft(spec, n)
    else:  # noise with slow tremolo
        x = _colored(n, rng.uniform(-6, 0), rng) * _slow_am(n, rng, rng.uniform(0.3, 0.9))
    return _gain(x, rng)


def _harmonic_tone(t: np.ndarray, f0: float, rng: np.random.Generator) -> np.ndarray:
    nh = 1 if rng.random() < 0.6 else int(rng.integers(2, 8))
    x = np.zeros_like(t)
    for h in range(1, nh + 1):
        if f0 * h < SR / 2 - 100:
            x += np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) / h ** rng.uniform(0.5, 2)
    return x


def tone(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / SR
    f0 = float(np.exp(rng.uniform(np.log(40), np.log(3800))))
    variant = rng.integers(0, 5)
    if variant == 0:  # steady (maybe harmonic) tone
        x = _harmonic_tone(t, f0, rng)
    elif variant == 1:  # vibrato / FM
        dev = rng.uniform(0.002, 0.03) * f0
        phase = 2 * np.pi * f0 * t + dev / rng.uniform(0.5, 8) * np.sin(
            2 * np.pi * rng.uniform(0.5, 8) * t
        )
        x = np.sin(phase)
    elif variant == 2:  # pulsed beeps
        period = rng.uniform(0.2, 2.0)
        duty = rng.uniform(0.2, 0.8)
        x = _harmonic_tone(t, f0, rng) * ((t % period) < duty * period)
    elif variant == 3:  # two or three fixed tones
        x = sum(
            np.sin(2 * np.pi * float(np.exp(rng.uniform(np.log(60), np.log(3800)))) * t)
            for _ in range(int(rng.integers(2, 4)))
        )
    else:  # tone over a little noise
        x = _harmonic_tone(t, f0, rng)
        x = x + rng.standard_normal(n) * np.std(x) * 10 ** (-rng.uniform(10, 40) / 20)
    return _gain(np.asarray(x), rng)


def sweep(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / SR
    f1, f2 = sorted(float(np.exp(v)) for v in rng.uniform(np.log(30), np.log(3900), 2))
    if f2 / f1 < 1.5:
        f2 = min(3900.0, f1 * 4)
    if rng.random() < 0.5:
        f1, f2 = f2, f1
    period = n / SR if rng.random() < 0.4 else rng.uniform(0.3, 10.0)
    tau = (t % period) / period
    if rng.random() < 0.5:  # linear  # noqa: SIM108
        inst = f1 + (f2 - f1) * tau
    else:  # logarithmic
        inst = f1 * (f2 / f1) ** tau
    if rng.random() < 0.2:  # triangle: up and down
        tri = 1 - np.abs(2 * tau - 1)
        inst = f1 * (f2 / f1) ** tri
    phase = 2 * np.pi * np.cumsum(inst) / SR
    x = np.sin(phase)
    if rng.random() < 0.3:
        x = x + 0.3 * np.sin(2 * phase) * (inst * 2 < SR / 2)
    return _gain(x, rng)


def clicks(rng: np.random.Generator, n: int) -> np.ndarray:
    x = np.zeros(n)
    variant = rng.integers(0, 4)
    if variant == 0:  # metronome
        period = int(rng.uniform(0.05, 2.0) * SR)
        idx = np.arange(int(rng.integers(0, period)), n, period)
    elif variant == 1:  # random clicks
        rate = rng.uniform(0.5, 30)
        idx = np.sort(rng.integers(0, n, max(1, int(rate * n / SR))))
    elif variant == 2:  # buzz: fast impulse train
        period = int(SR / rng.uniform(20, 400))
        idx = np.arange(0, n, period)
    else:  # two-level pattern (tick-tock)
        period = int(rng.uniform(0.1, 1.0) * SR)
        idx = np.arange(0, n, period)
        x[idx[::2]] = 0.5
    x[idx] = np.where(x[idx] == 0.5, 0.5, 1.0) * (rng.choice([-1, 1], idx.size))
    if rng.random() < 0.5:  # short decaying burst instead of a single sample
        length = int(rng.uniform(0.001, 0.02) * SR) + 2
        kern = np.exp(-np.arange(length) / (length / 4)) * rng.standard_normal(length)
        x = np.convolve(x, kern)[:n]
    if rng.random() < 0.3:
        x = x + rng.standard_normal(n) * 10 ** (-rng.uniform(30, 60) / 20)
    return _gain(x, rng)


_DTMF_LOW = (697, 770, 852, 941)
_DTMF_HIGH = (1209, 1336, 1477, 1633)


def dtmf(rng: np.random.Generator, n: int) -> np.ndarray:
    x = np.zeros(n)
    variant = rng.integers(0, 3)
    pos = 0
    if variant == 0:  # dialled digits
        while pos < n:
            on = int(rng.uniform(0.04, 0.3) * SR)
            off = int(rng.uniform(0.04, 0.5) * SR)
            if rng.random() < 0.1:
                off += int(rng.uniform(0.5, 2) * SR)
            t = np.arange(min(on, n - pos)) / SR
            lo, hi = rng.choice(_DTMF_LOW), rng.choice(_DTMF_HIGH)
            x[pos : pos + t.size] = np.sin(2 * np.pi * lo * t) + np.sin(2 * np.pi * hi * t)
            pos += on + off
    else:  # call-progress tones: dial, busy, ringback
        pairs = ((350, 440), (480, 620), (440, 480), (425, 425), (400, 450))
        a, b = pairs[int(rng.integers(0, len(pairs)))]
        t = np.arange(n) / SR
        x = np.sin(2 * np.pi * a * t) + np.sin(2 * np.pi * b * t)
        if variant == 2:
            period = rng.uniform(0.5, 6.0)
            x *= (t % period) < rng.uniform(0.2, 0.7) * period
    return _gain(x, rng)


def blips(rng: np.random.Generator, n: int) -> np.ndarray:
    x = (
        rng.standard_normal(n) * 10 ** (-rng.uniform(60, 90) / 20)
        if rng.random() < 0.5
        else np.zeros(n)
    )
    count = int(rng.integers(1, 12) * n / (10 * SR)) + 1
    for _ in range(count):
        length = int(rng.uniform(0.02, 0.4) * SR)
        start = int(rng.integers(0, max(1, n - length)))
        t = np.arange(length) / SR
        env = np.hanning(length)
        if rng.random() < 0.6:
            burst = np.sin(2 * np.pi * rng.uniform(200, 3500) * t)
        else:
            burst = rng.standard_normal(length)
        x[start : start + length] += env * burst
    return _gain(x, rng)


# Vowel formants (F1, F2, F3) in Hz.
_VOWELS = np.array(
    [
        (730, 1090, 2440),
        (270, 2290, 3010),
        (300, 870, 2240),
        (530, 1840, 2480),
        (570, 840, 2410),
        (660, 1720, 2410),
        (490, 1350, 1690),
        (440, 1020, 2240),
    ]
)


def _resonator(x: np.ndarray, f: float, bw: float) -> np.ndarray:
    r = np.exp(-np.pi * bw / SR)
    a = [1, -2 * r * np.cos(2 * np.pi * f / SR), r * r]
    return np.asarray(lfilter([1 - r], a, x))


def formant_speech(rng: np.random.Generator, n: int) -> np.ndarray:
    """Speech-like signal: voiced syllables with pitch contours, fricatives and pauses."""
    out = np.zeros(n)
    base_f0 = rng.uniform(85, 260)
    syl_rate = rng.uniform(3.0, 6.5)
    pos = int(rng.uniform(0, 0.5) * SR)
    phase = 0.0
    phrase_left = rng.uniform(1.0, 4.0)
    while pos < n:
        dur = rng.uniform(0.6, 1.4) / syl_rate
        m = min(int(dur * SR), n - pos)
        if m <= 16:
            break
        t = np.arange(m) / SR
        # Pitch: declination plus a rise or fall within the syllable.
        f0 = base_f0 * (1 + rng.uniform(-0.15, 0.15) + rng.uniform(-0.25, 0.25) * t / dur)
        ph = phase + 2 * np.pi * np.cumsum(f0) / SR
        phase = float(ph[-1])
        src = np.sign(np.sin(ph)) * 0.5 + np.sin(ph)  # buzzy glottal-ish source
        src = np.diff(np.concatenate([[0.0], src]))
        v0, v1 = _VOWELS[rng.integers(0, len(_VOWELS), 2)]
        half = m // 2
        voiced = np.zeros(m)
        for seg, v in ((slice(0, half), v0), (slice(half, m), v1)):
            y = src[seg]
            for f, bw in zip(v * rng.uniform(0.9, 1.2), (80, 100, 140), strict=True):
                y = _resonator(y, f, bw)
            voiced[seg] = y
        env = np.sin(np.pi * np.arange(m) / m) ** rng.uniform(0.5, 2)
        syl = voiced / (np.std(voiced) + 1e-9) * env
        if rng.random() < 0.4:  # fricative onset
            k = min(m, int(rng.uniform(0.03, 0.12) * SR))
            fr = np.diff(rng.standard_normal(k + 1)) * rng.uniform(0.2, 0.8)
            syl[:k] = syl[:k] * 0.2 + fr * np.hanning(k)
        out[pos : pos + m] += syl
        pos += m
        phrase_left -= dur
        if phrase_left <= 0:
            pos += int(rng.uniform(0.15, 0.9) * SR)
            phrase_left = rng.uniform(1.0, 4.0)
    if rng.random() < 0.3:
        out += rng.standard_normal(n) * np.std(out) * 10 ** (-rng.uniform(20, 45) / 20)
    return _gain(out, rng)


_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "music",
    "catalog",
    "record",
    "track",
    "upload",
    "listen",
    "station",
    "morning",
    "weather",
    "report",
    "news",
    "tonight",
    "market",
    "price",
    "city",
    "council",
    "river",
    "bridge",
    "school",
    "children",
    "garden",
    "telephone",
    "message",
    "number",
    "please",
    "press",
    "hold",
]
_VOICES = ("en", "en-us", "en+f3", "en+m3", "en+f2", "de", "fr", "es", "it", "pt", "nl", "pl", "sv")


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak_speech(rng: np.random.Generator, n: int) -> np.ndarray:
    """Real text-to-speech from espeak-ng: random words, voice, rate and pitch.

    Sentences are separated by pauses of 0.1-1 s.
    """
    out = np.zeros(n)
    pos = int(rng.uniform(0, 0.5) * SR)
    while pos < n:
        words = " ".join(rng.choice(_WORDS, int(rng.integers(4, 16))))
        cmd = [
            "espeak-ng",
            "--stdout",
            "-v",
            str(rng.choice(_VOICES)),
            "-s",
            str(int(rng.uniform(120, 220))),
            "-p",
            str(int(rng.uniform(20, 80))),
            words,
        ]
        wav = subprocess.run(cmd, capture_output=True, check=True).stdout
        pcm = np.frombuffer(wav[44:], dtype="<i2").astype(np.float64) / 32768
        y = resample_poly(pcm, 8, 22)[: n - pos]  # espeak-ng speaks at 22050 Hz
        out[pos : pos + y.size] += y
        pos += y.size + int(rng.uniform(0.1, 1.0) * SR)
    if rng.random() < 0.3:
        out += rng.standard_normal(n) * np.std(out) * 10 ** (-rng.uniform(20, 45) / 20)
    return _gain(out, rng)


def speech(rng: np.random.Generator, n: int) -> np.ndarray:
    if espeak_available() and rng.random() < 0.7:
        return espeak_speech(rng, n)
    return formant_speech(rng, n)


MOCKS: dict[str, Gen] = {
    "noise": noise,
    "tone": tone,
    "sweep": sweep,
    "clicks": clicks,
    "dtmf": dtmf,
    "blips": blips,
    "speech": speech,
}


def mock(kind: str, seed: int, seconds: float = EXCERPT_S) -> np.ndarray:
    digest = hashlib.sha256(f"{kind}:{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return MOCKS[kind](rng, int(seconds * SR))


def synthetic_song(seed: int, seconds: float = EXCERPT_S) -> np.ndarray:
    return np.asarray(resample_poly(synthetic.song(seed, seconds), 320, 882), dtype=np.float32)


def track_audio(track: corpus.CorpusTrack) -> np.ndarray:
    """A whole corpus track at 8 kHz, cached as int16 under CACHE."""
    key = hashlib.sha256(track.track_id.encode()).hexdigest()[:16]
    path = CACHE / f"{key}.npy"
    if path.exists():
        return np.load(path).astype(np.float32) / 32767
    x = corpus.decode_audio(track.path, sr=SR)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, np.round(np.clip(x, -1, 1) * 32767).astype(np.int16))
    tmp.replace(path)
    return x


def is_train_track(track: corpus.CorpusTrack) -> bool:
    """Half the tracks of every package fit the model; the others are held out."""
    return int(hashlib.sha256(track.track_id.encode()).hexdigest(), 16) % 2 == 0


def excerpt_offsets(duration_s: float, per_track: int, *, phase: float = 0.0) -> list[float]:
    """Up to `per_track` evenly spread 30 s excerpt starts, shifted by `phase` (0..1) of a step."""
    span = duration_s - EXCERPT_S
    if span <= 0:
        return [0.0]
    count = max(1, min(per_track, int(span // 10) + 1))
    step = span / count
    return [step * (i + phase) for i in range(count)]


def corpus_excerpts(
    tracks: list[corpus.CorpusTrack], per_track: int, *, phase: float = 0.0
) -> Iterator[tuple[corpus.CorpusTrack, float, np.ndarray]]:
    for track in tracks:
        audio = track_audio(track)
        for off in excerpt_offsets(audio.size / SR, per_track, phase=phase):
            start = int(off * SR)
            yield track, off, audio[start : start + int(EXCERPT_S * SR)]


def load_tracks() -> list[corpus.CorpusTrack]:
    return corpus.list_corpus(corpus.DEFAULT_CORPUS_DIR)


def _features_of(x: np.ndarray) -> np.ndarray:
    from earmark_ingest import music_check

    return music_check.features(x, SR)


def collect(
    *,
    tracks: list[corpus.CorpusTrack],
    per_track: int,
    phase: float,
    mock_seeds: range,
    song_seeds: range,
    log: Callable[[str], None] = print,
) -> dict[str, list]:
    """Segment features of every example: rows of (label, group, source, feats)."""
    out: dict[str, list] = {"label": [], "group": [], "source": [], "feats": []}

    def add(label: str, source: str, feats: np.ndarray) -> None:
        out["label"].append(label)
        out["group"].append(len(out["group"]))
        out["source"].append(source)
        out["feats"].append(feats)

    for i, (track, off, x) in enumerate(corpus_excerpts(tracks, per_track, phase=phase)):
        add("music", f"{track.track_id}@{off:.0f}", _features_of(x))
        if i % 100 == 0:
            log(f"  music excerpts: {i}")
    for seed in song_seeds:
        add("music", f"synthetic:{seed}", _features_of(synthetic_song(seed)))
    for kind in MOCKS:
        for seed in mock_seeds:
            add(kind, f"{kind}:{seed}", _features_of(mock(kind, seed)))
        log(f"  mocks: {kind} done")
    return out
