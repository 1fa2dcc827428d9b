"""Audio descriptors computed with essentia (AGPL-3.0).

`describe` turns mono 44.1 kHz samples into the versioned `TrackFeatures`
message. EXTRACTOR_VERSION names this code, its parameters and the essentia
build; a change to any of them must bump EXTRACTOR_REVISION so that stored rows
(and similarity vectors) from different extractors are never compared.
"""

from __future__ import annotations

import numpy as np

from earmark.v1 import features_pb2

from ._essentia import es, essentia

SCHEMA_VERSION = 2
EXTRACTOR_REVISION = 1
# RhythmExtractor2013 and OnsetRate assume 44.1 kHz input.
SAMPLE_RATE_HZ = 44100
FRAME = 2048
HOP = 2048
# Everything longer is described from its middle 10 minutes: enough for stable
# statistics, and it caps the work per track.
MAX_ANALYSED_S = 600.0
KEY_PROFILE = "krumhansl"
MIN_BPM, MAX_BPM = 40.0, 208.0
ENVELOPE_HOP = 512
OCTAVE_DOUBLE_SUPPORT = 0.8
OCTAVE_HALF_CONTRAST = 0.45
MFCC_BANDS = 40
MFCC_COEFFS = 13
NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_ALIASES = {"Db": "C#", "D#": "Eb", "Gb": "F#", "G#": "Ab", "A#": "Bb", "Cb": "B", "Fb": "E"}
_ALIASES |= {"E#": "F", "B#": "C"}

EXTRACTOR_VERSION = (
    f"earmark-essentia-{EXTRACTOR_REVISION}/essentia-{essentia.__version__}"
    f"/key-{KEY_PROFILE}/rhythm-multifeature/frame{FRAME}-hop{HOP}"
)


def normalise_key(name: str) -> str:
    """'a#' -> 'Bb', 'db' -> 'C#'; '' stays ''. Raises ValueError for a non-note."""
    name = name.strip()
    if not name:
        return ""
    canonical = name[0].upper() + name[1:].lower().replace("♯", "#").replace("♭", "b")
    canonical = _ALIASES.get(canonical, canonical)
    if canonical not in NOTE_NAMES:
        raise ValueError(f"{name!r} is not a key (one of {', '.join(NOTE_NAMES)})")
    return canonical


class _Algorithms:
    """essentia algorithms configured once; instances are not thread-safe."""

    def __init__(self) -> None:
        sr = SAMPLE_RATE_HZ
        self.rhythm = es.RhythmExtractor2013(method="multifeature")
        self.onsets = es.OnsetRate()
        self.key = es.KeyExtractor(sampleRate=sr, profileType=KEY_PROFILE)
        self.loudness = es.LoudnessEBUR128(sampleRate=sr, startAtZero=True)
        self.dance = es.Danceability(sampleRate=sr)
        self.dyn = es.DynamicComplexity(sampleRate=sr)
        self.window = es.Windowing(type="hann", size=FRAME)
        self.spectrum = es.Spectrum(size=FRAME)
        self.mfcc = es.MFCC(
            inputSize=FRAME // 2 + 1,
            sampleRate=sr,
            numberBands=MFCC_BANDS,
            numberCoefficients=MFCC_COEFFS,
            highFrequencyBound=11025,
        )
        self.centroid = es.Centroid(range=sr / 2)
        self.rolloff = es.RollOff(sampleRate=sr, cutoff=0.85)
        self.flatness = es.Flatness()
        self.zcr = es.ZeroCrossingRate()
        self.peaks = es.SpectralPeaks(
            sampleRate=sr,
            maxPeaks=60,
            magnitudeThreshold=1e-5,
            minFrequency=40,
            maxFrequency=5000,
            orderBy="magnitude",
        )
        self.hpcp = es.HPCP(
            sampleRate=sr,
            size=12,
            referenceFrequency=440,
            minFrequency=40,
            maxFrequency=5000,
            harmonics=4,
            weightType="cosine",
            nonLinear=False,
            normalized="unitMax",
        )


_ALGOS: _Algorithms | None = None


def _algorithms() -> _Algorithms:
    """The configured algorithms, reset: several (OnsetRate, the beat trackers) keep
    state between calls and return nothing on a second signal unless reset."""
    global _ALGOS
    if _ALGOS is None:
        _ALGOS = _Algorithms()
    for algorithm in vars(_ALGOS).values():
        algorithm.reset()
    return _ALGOS


def _stat(values: np.ndarray) -> features_pb2.Stat:
    if values.size == 0:
        return features_pb2.Stat()
    return features_pb2.Stat(mean=float(np.mean(values)), stdev=float(np.std(values)))


def _onset_envelope(x: np.ndarray) -> np.ndarray:
    """Half-wave rectified RMS-amplitude flux in ENVELOPE_HOP steps (about 86 per second)."""
    usable = x[: x.size - x.size % ENVELOPE_HOP]
    if usable.size < 2 * ENVELOPE_HOP:
        return np.zeros(0)
    energy = np.mean(np.square(usable.reshape(-1, ENVELOPE_HOP), dtype=np.float64), axis=1)
    # Amplitude (not log) flux: loud accents count for more than quiet ticks.
    amplitude = np.sqrt(energy)
    flux: np.ndarray = np.maximum(np.diff(amplitude, prepend=amplitude[0]), 0.0)
    return flux


def _strength_at(envelope: np.ndarray, times_s: np.ndarray) -> np.ndarray:
    rate = SAMPLE_RATE_HZ / ENVELOPE_HOP
    idx = np.round(times_s * rate).astype(int)
    idx = idx[(idx >= 2) & (idx < envelope.size - 2)]
    if idx.size == 0:
        return np.zeros(0)
    peaks: np.ndarray = np.max(np.stack([envelope[idx + d] for d in (-2, -1, 0, 1, 2)]), axis=0)
    return peaks


def _octave_alternative(bpm: float, ticks: np.ndarray, x: np.ndarray) -> tuple[bool, float]:
    """Whether half or double `bpm` is about as plausible as `bpm` itself.

    Double tempo is plausible when the off-beats (half-way between detected
    beats) carry onsets nearly as strong as the beats; half tempo when every
    other beat is much weaker than its neighbours (the tracker may be counting
    eighths). Returns (ambiguous, the alternative tempo).
    """
    if bpm <= 0 or ticks.size < 8:
        return False, 0.0
    envelope = _onset_envelope(x)
    on = _strength_at(envelope, ticks)
    off = _strength_at(envelope, (ticks[:-1] + ticks[1:]) / 2)
    if on.size < 8 or off.size < 4 or np.median(on) <= 0:
        return False, 0.0
    double_support = float(np.median(off) / np.median(on))
    even, odd = float(np.median(on[0::2])), float(np.median(on[1::2]))
    half_contrast = min(even, odd) / max(even, odd, 1e-12)
    if double_support >= OCTAVE_DOUBLE_SUPPORT and bpm * 2 <= MAX_BPM:
        return True, bpm * 2
    if half_contrast <= OCTAVE_HALF_CONTRAST and bpm / 2 >= MIN_BPM:
        return True, bpm / 2
    return False, 0.0


def _frames(x: np.ndarray) -> np.ndarray:
    if x.size < FRAME:
        x = np.pad(x, (0, FRAME - x.size))
    return np.lib.stride_tricks.sliding_window_view(x, FRAME)[::HOP]


def describe(samples: np.ndarray, track_id: str = "") -> features_pb2.TrackFeatures:
    """Descriptors of mono float32 samples at SAMPLE_RATE_HZ."""
    a = _algorithms()
    full = np.ascontiguousarray(samples, dtype=np.float32)
    duration = full.size / SAMPLE_RATE_HZ
    x = full
    limit = int(MAX_ANALYSED_S * SAMPLE_RATE_HZ)
    if x.size > limit:
        start = (x.size - limit) // 2
        x = np.ascontiguousarray(x[start : start + limit])
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0

    # Rhythm.
    bpm, ticks, confidence, _estimates, _intervals = a.rhythm(x)
    bpm = float(bpm)
    ambiguous, alternative = _octave_alternative(bpm, np.asarray(ticks), x)
    _onset_times, onset_rate = a.onsets(x)
    danceability, _dfa = a.dance(x)
    dynamic_complexity, _loud = a.dyn(x)

    # Tonality.
    key, scale, strength = a.key(x)

    # Loudness of the mono signal (BS.1770: a single channel with weight 1).
    stereo = np.zeros((x.size, 2), dtype=np.float32)
    stereo[:, 0] = x
    _m, _s, integrated, lra = a.loudness(stereo)

    # Frame-wise spectral descriptors.
    n = _frames(x).shape[0]
    mfccs = np.empty((n, MFCC_COEFFS), dtype=np.float32)
    hpcps = np.empty((n, 12), dtype=np.float32)
    centroid = np.empty(n, dtype=np.float32)
    rolloff = np.empty(n, dtype=np.float32)
    flatness = np.empty(n, dtype=np.float32)
    zcr = np.empty(n, dtype=np.float32)
    energy = np.empty(n, dtype=np.float32)
    for i, frame in enumerate(_frames(x)):
        frame = np.ascontiguousarray(frame)
        spec = a.spectrum(a.window(frame))
        energy[i] = float(np.sum(spec * spec))
        _bands, mfccs[i] = a.mfcc(spec)
        centroid[i] = a.centroid(spec)
        rolloff[i] = a.rolloff(spec)
        flatness[i] = a.flatness(spec + np.float32(1e-10))
        zcr[i] = a.zcr(frame)
        freqs, mags = a.peaks(spec)
        hpcps[i] = a.hpcp(freqs, mags)
    # Silent frames have no timbre or pitch; they would drag every mean to zero.
    voiced = energy > max(1e-9, float(np.max(energy, initial=0.0)) * 1e-6)
    if not voiced.any():
        voiced[:] = True
    # essentia's HPCP bin 0 is the reference frequency, A; rotate so that 0 is C.
    hpcps = np.roll(hpcps, -3, axis=1)

    features = features_pb2.TrackFeatures(
        track_id=track_id,
        extractor_version=EXTRACTOR_VERSION,
        schema_version=SCHEMA_VERSION,
        duration_s=duration,
        loudness_dbfs=20 * np.log10(max(rms, 1e-10)),
        spectral_centroid_hz=float(np.mean(centroid[voiced])),
        zero_crossing_rate=float(np.mean(zcr[voiced])),
        rhythm=features_pb2.Rhythm(
            bpm=bpm,
            bpm_confidence=float(confidence),
            octave_ambiguous=ambiguous,
            bpm_alternative=alternative,
            onset_rate_hz=float(onset_rate),
            danceability=float(danceability),
            dynamic_complexity=float(dynamic_complexity),
        ),
        tonality=features_pb2.Tonality(
            key=normalise_key(key) if key else "",
            scale=scale,
            strength=float(strength),
            profile=KEY_PROFILE,
            hpcp_mean=np.mean(hpcps[voiced], axis=0).tolist(),
            hpcp_stdev=np.std(hpcps[voiced], axis=0).tolist(),
        ),
        loudness=features_pb2.Loudness(integrated_lufs=float(integrated), range_lu=float(lra)),
        spectral=features_pb2.Spectral(
            centroid_hz=_stat(centroid[voiced]),
            rolloff_hz=_stat(rolloff[voiced]),
            flatness=_stat(flatness[voiced]),
            mfcc_mean=np.mean(mfccs[voiced], axis=0).tolist(),
            mfcc_stdev=np.std(mfccs[voiced], axis=0).tolist(),
        ),
    )
    return features
