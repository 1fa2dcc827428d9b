"""Is an upload music, or mock audio (noise, tones, sweeps, clicks, speech …)?

A pure-numpy classifier over interpretable features, run on float32 mono at
8 kHz (``ANALYSIS_RATE_HZ``; the rate ingest already decodes at for
validation). Other rates are resampled first.

The signal is cut into 10 s segments (at most ``MAX_SEGMENTS``, spread evenly
over the file). For each segment a short-time spectrum (512-point Hann window,
32 ms hop) gives the features below; a multinomial logistic regression, fitted
by ``bench/music_check_train.py`` and committed here as constants, turns them
into class probabilities. The file's score is the median over its active
segments of log P(music) - log max P(mock kind); it is music when the score
is at least ``THRESHOLD``. The model, its evaluation and the command that
reproduces it are in ``docs/music_check.md``.

Features (per segment):

``gap_frac``       fraction of frames 30 dB below the loud ones (silence, clicks, pauses)
``env_std``        spread of frame level in dB (steady noise/tones ≈ 0)
``flatness``       median spectral flatness (noise high, tones low)
``norm_flatness``  flatness of each frame relative to the long-term spectrum
                   (stationary noise ≈ e^-gamma, music lower)
``block_var``      how much the 1 s spectrum changes across the segment, dB
``peak_conc``      energy fraction in the 3 strongest spectral peaks (1-2 partials ≈ 1)
``n_peaks``        median number of prominent spectral peaks (partials) per frame
``peak_persist``   fraction of peaks still present 96 ms later (held notes vs. gliding speech)
``glide``          dominant frequency moving steadily in one direction (sweeps)
``mod_speech``     share of level modulation at 3-6 Hz (syllable rate)
``onset_reg``      peak of the onset-strength autocorrelation (regular clicks)
``crest``          peak / RMS of the waveform, dB
``centroid_std``   spread of the spectral centroid, octaves
``bass``           log energy share below 250 Hz
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np

ANALYSIS_RATE_HZ = 8000
SEGMENT_S = 10.0
MIN_SEGMENT_S = 2.0
MAX_SEGMENTS = 12
N_FFT = 512
HOP = 256

# A sample at or beyond this magnitude counts as clipped (full scale is 1.0;
# 16-bit full scale decodes to 32767/32768).
CLIP_LEVEL = 0.999
# Default share of clipped samples above which an upload is refused as CLIPPED.
# Real music in the Debian corpus reaches 0.7 % (one loudly mastered track 16 %);
# a song turned up 6 dB into hard clipping reaches several percent.
MAX_CLIPPING_RATIO = 0.05
# Segments quieter than this (RMS, dBFS) and without a peak above
# SEGMENT_PEAK_DBFS are silent and not classified.
SEGMENT_SILENCE_DBFS = -60.0
SEGMENT_PEAK_DBFS = -45.0

FEATURES = (
    "gap_frac",
    "env_std",
    "flatness",
    "norm_flatness",
    "block_var",
    "peak_conc",
    "n_peaks",
    "peak_persist",
    "glide",
    "mod_speech",
    "onset_reg",
    "crest",
    "centroid_std",
    "bass",
)

KINDS = ("music", "noise", "tone", "sweep", "clicks", "dtmf", "blips", "speech")

REASONS = {
    "noise": "sounds like noise (steady, flat spectrum), not music",
    "tone": "sounds like a steady test tone (one or two fixed partials), not music",
    "sweep": "sounds like a frequency sweep, not music",
    "clicks": "sounds like clicks or an impulse train, not music",
    "dtmf": "sounds like telephone / DTMF tone pairs, not music",
    "blips": "is mostly silence with short blips, not music",
    "speech": "sounds like speech without music",
    "silence": "is silent",
}

# ---- fitted by bench/music_check_train.py (do not edit by hand) -------------
# BEGIN MODEL
# fmt: off
FEATURE_MEAN = np.array([
    0.197636, 1.50629, -9.78602, -3.71172, 1.49052, 0.660391, 1.1599,
    0.423366, 0.167531, 0.221593, 0.39071, 14.3128, 0.374768, -1.5155,
])
FEATURE_STD = np.array([
    0.309686, 1.04066, 8.59012, 4.76993, 1.13536, 0.345001, 0.700926,
    0.361689, 0.251758, 0.173543, 0.301073, 8.95237, 0.344998, 1.42155,
])
COEF = np.array([
    [  # music
        -0.935855, 0.353563, 0.228976, 0.150832, 1.22404, -0.103724, 1.95072,
        3.01172, -0.579052, -0.0809545, 1.64065, 0.776633, 1.93721, 1.88953,
    ],
    [  # noise
        -1.91375, -0.496541, 0.650354, 1.35617, -0.622976, -1.67112, 0.193228,
        -5.0247, 2.19306, 0.636128, -0.300105, -0.974345, 1.54915, -0.42368,
    ],
    [  # tone
        1.29547, 0.423484, 0.92373, -1.5525, -3.17436, 0.433245, -1.04593,
        1.33929, -0.390126, -0.00284069, 1.3761, -4.85255, -4.90407, 0.477963,
    ],
    [  # sweep
        -1.33124, -2.74836, -1.43476, -0.120543, 3.28432, -0.283738, -1.39262,
        1.01216, 0.140979, -0.351998, 0.959212, -2.90855, 1.06479, 0.264275,
    ],
    [  # clicks
        0.99097, -1.8478, 2.51325, 0.307862, -1.7563, -1.50754, -1.93911,
        2.37343, 0.147428, 0.405323, 0.759309, 2.16531, -2.9176, -0.0625557,
    ],
    [  # dtmf
        0.999416, 1.08397, -3.75609, 0.729071, -1.74287, 3.81671, 0.258428,
        0.981207, -0.508702, 0.17608, 1.04615, 0.904884, -0.420899, -1.29805,
    ],
    [  # blips
        1.24676, 0.231609, -1.02677, -0.0982061, 2.46487, -1.72046, -0.211027,
        -0.456854, -1.04441, -1.80253, -2.20035, 4.18018, 0.589428, -0.344911,
    ],
    [  # speech
        -0.351771, 3.00008, 1.90131, -0.772687, 0.323281, 1.03663, 2.18631,
        -3.23625, 0.0408208, 1.02079, -3.28097, 0.708442, 3.102, -0.502562,
    ],
])
INTERCEPT = np.array([
    4.88915, -2.0718, -0.497989, 0.64379, -0.285527, 0.478506, -0.475052,
    -2.68108,
])
THRESHOLD = 0.0000
# fmt: on
# END MODEL


@dataclass(frozen=True)
class MusicVerdict:
    is_music: bool
    kind: str  # one of KINDS, or "silence"
    score: float  # median segment log-odds of music against the likeliest mock kind
    reason: str  # human-readable; the rejection message when not music
    segments: int = 0  # segments classified


def clipping_ratio(samples: np.ndarray, level: float = CLIP_LEVEL) -> float:
    """Fraction of samples at or beyond `level` in magnitude (full scale is 1.0)."""
    x = np.asarray(samples)
    if x.size == 0:
        return 0.0
    return float(np.count_nonzero(np.abs(x) >= level)) / float(x.size)


def is_clipped(samples: np.ndarray, max_ratio: float = MAX_CLIPPING_RATIO) -> bool:
    return clipping_ratio(samples) > max_ratio


def resample(samples: np.ndarray, rate_hz: int, target_hz: int = ANALYSIS_RATE_HZ) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32)
    if rate_hz == target_hz or x.size == 0:
        return x
    from scipy.signal import resample_poly

    g = gcd(int(rate_hz), int(target_hz))
    return np.asarray(resample_poly(x, target_hz // g, rate_hz // g), dtype=np.float32)


def _segments(x: np.ndarray, rate: int) -> list[np.ndarray]:
    seg = int(SEGMENT_S * rate)
    if x.size < 2 * seg:  # up to 20 s: one or two segments
        if x.size <= seg:
            return [x]
        return [x[:seg], x[-seg:]] if x.size >= seg + rate * MIN_SEGMENT_S else [x]
    n = min(MAX_SEGMENTS, x.size // seg)
    starts = np.linspace(0, x.size - seg, n).astype(int)
    return [x[s : s + seg] for s in starts]


def _frames_power(x: np.ndarray) -> np.ndarray:
    n = 1 + (x.size - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP][:n]
    win = np.hanning(N_FFT).astype(np.float32)
    spec = np.fft.rfft(frames * win, axis=1)
    return (spec.real**2 + spec.imag**2).astype(np.float32)


def _flatness(p: np.ndarray) -> np.ndarray:
    """Per-row natural log of geometric mean / arithmetic mean."""
    lp = np.log(p + 1e-12)
    return np.asarray(lp.mean(axis=1) - np.log(p.mean(axis=1) + 1e-12))


# Analysis band 60 Hz … 3.9 kHz at 8 kHz / 512 points (15.6 Hz per bin).
_LO, _HI = 4, 250
_BASS_HI = 16  # 250 Hz
_BAND_EDGES = np.unique(np.geomspace(_LO, _HI, 25).astype(int))
_FREQS_OCT = np.log2((np.arange(_LO, _HI) + 0.5) * ANALYSIS_RATE_HZ / N_FFT)


def segment_features(x: np.ndarray) -> np.ndarray | None:
    """The FEATURES vector of one segment at ANALYSIS_RATE_HZ, or None if it is silent/short."""
    x = np.asarray(x, dtype=np.float32)
    if x.size < int(MIN_SEGMENT_S * ANALYSIS_RATE_HZ):
        return None
    x = x - x.mean()
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    peak = float(np.abs(x).max())
    if rms <= 10 ** (SEGMENT_SILENCE_DBFS / 20) and peak <= 10 ** (SEGMENT_PEAK_DBFS / 20):
        return None
    crest = 20 * np.log10(peak / rms)
    x = x / rms
    full = _frames_power(x)
    p = full[:, _LO:_HI] + 1e-9  # floor ≈ -90 dB below unit RMS
    energy = p.sum(axis=1)
    e_db = 10 * np.log10(energy)
    ref = float(np.percentile(e_db, 95))
    active = e_db > ref - 30
    if active.sum() < 2:
        return None
    gap_frac = 1.0 - float(active.mean())
    pa = p[active]
    env_std = float(np.std(np.maximum(e_db, ref - 30)))
    flatness = float(np.median(_flatness(pa)))
    lt = pa.mean(axis=0)
    norm_flatness = float(np.median(_flatness(pa / lt)))
    bass = float(np.log10(full[active, 1:_BASS_HI].sum() / (full[active, 1:].sum() + 1e-9) + 1e-4))

    # 1 s blocks of band energies: how much does the spectrum move?
    bands = np.add.reduceat(p, _BAND_EDGES[:-1] - _LO, axis=1)
    blk = 31
    nb = bands.shape[0] // blk
    if nb >= 2:
        bb = bands[: nb * blk].reshape(nb, blk, -1).mean(axis=1)
        bdb = 10 * np.log10(bb / bb.sum(axis=1, keepdims=True))
        block_var = float(np.mean(np.std(bdb, axis=0)))
    else:
        block_var = 0.0

    # Spectral peaks: local maxima standing 6 dB over the ±8-bin average and
    # within 40 dB of the frame's strongest bin.
    cs = np.cumsum(np.pad(p, ((0, 0), (9, 8)), mode="edge"), axis=1, dtype=np.float64)
    local = (cs[:, 17:] - cs[:, :-17]) / 17
    is_max = np.zeros_like(p, dtype=bool)
    is_max[:, 1:-1] = (p[:, 1:-1] > p[:, :-2]) & (p[:, 1:-1] >= p[:, 2:])
    peaks = is_max & (p > 4 * local) & (p > 1e-4 * p.max(axis=1, keepdims=True))
    peaks &= active[:, None]
    n_peaks = float(np.median(peaks[active].sum(axis=1)))
    lag = 3
    now = peaks[lag:]
    before = peaks[:-lag]
    near = before.copy()
    near[:, 1:] |= before[:, :-1]
    near[:, :-1] |= before[:, 1:]
    peak_persist = float((now & near).sum() / max(1, now.sum()))

    # Energy in the three strongest peaks (±1 bin), per frame.
    pk = np.where(is_max, p, 0.0)
    top = np.argsort(pk, axis=1)[:, -3:]
    rows = np.arange(p.shape[0])[:, None]
    conc = np.zeros(p.shape[0])
    for d in (-1, 0, 1):
        conc += p[rows, np.clip(top + d, 0, p.shape[1] - 1)].sum(axis=1)
    peak_conc = float(np.median(np.minimum(1.0, conc / energy)[active]))

    # Dominant frequency (parabolic interpolation) and steady glides.
    k = np.argmax(p, axis=1)
    kk = np.clip(k, 1, p.shape[1] - 2)
    a, b, c = (np.log(p[rows[:, 0], kk + d]) for d in (-1, 0, 1))
    den = a - 2 * b + c
    frac = np.where(np.abs(den) > 1e-9, 0.5 * (a - c) / np.where(den == 0, 1, den), 0.0)
    f_dom = np.log2(kk + np.clip(frac, -0.5, 0.5) + _LO + 0.5)
    step = 8
    if f_dom.size > 2 * step:
        d1 = f_dom[step:-step] - f_dom[: -2 * step]
        d2 = f_dom[2 * step :] - f_dom[step:-step]
        ok = active[: -2 * step] & active[step:-step] & active[2 * step :]
        moving = (np.abs(d1) > 0.01) & (np.abs(d2) > 0.01) & (np.sign(d1) == np.sign(d2))
        moving &= (np.abs(d1) < 1.0) & (np.abs(d2) < 1.0)
        glide = float(moving[ok].mean()) if ok.any() else 0.0
    else:
        glide = 0.0

    # Level modulation spectrum (frame rate 31.25 Hz).
    env = np.maximum(e_db, ref - 30)
    env = env - env.mean()
    mod = np.abs(np.fft.rfft(env * np.hanning(env.size))) ** 2
    mf = np.fft.rfftfreq(env.size, HOP / ANALYSIS_RATE_HZ)
    total = mod[(mf >= 0.5) & (mf <= 15)].sum() + 1e-9
    mod_speech = float(mod[(mf >= 3) & (mf <= 6)].sum() / total)

    # Regularity of onsets: autocorrelation of positive band-level flux.
    lb = np.log(bands + 1e-9)
    flux = np.maximum(lb[1:] - lb[:-1], 0).sum(axis=1)
    flux = flux - flux.mean()
    ac = np.correlate(flux, flux, mode="full")[flux.size - 1 :]
    onset_reg = float(ac[6:63].max() / ac[0]) if ac[0] > 0 and ac.size > 64 else 0.0

    w = pa / pa.sum(axis=1, keepdims=True)
    centroid = (w * _FREQS_OCT).sum(axis=1)
    centroid_std = float(np.std(centroid))

    return np.array(
        [
            gap_frac,
            env_std,
            flatness,
            norm_flatness,
            block_var,
            peak_conc,
            n_peaks,
            peak_persist,
            glide,
            mod_speech,
            onset_reg,
            crest,
            centroid_std,
            bass,
        ],
        dtype=np.float64,
    )


def features(samples: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """Feature matrix (segments x FEATURES) of a signal; silent segments are left out."""
    x = resample(np.nan_to_num(np.asarray(samples, dtype=np.float32)), sample_rate_hz)
    rows = [
        f for f in (segment_features(s) for s in _segments(x, ANALYSIS_RATE_HZ)) if f is not None
    ]
    return np.array(rows).reshape(-1, len(FEATURES))


_LOG1P = [FEATURES.index(n) for n in ("env_std", "block_var", "n_peaks")]


def transform(feats: np.ndarray) -> np.ndarray:
    """Model inputs: the features, with the heavy-tailed ones on a log scale."""
    z = np.array(feats, dtype=np.float64)
    z[:, _LOG1P] = np.log1p(np.maximum(z[:, _LOG1P], 0))
    return z


def predict_log_proba(feats: np.ndarray) -> np.ndarray:
    """Log class probabilities (segments x KINDS) for a feature matrix."""
    z = (transform(feats) - FEATURE_MEAN) / FEATURE_STD
    logits = z @ COEF.T + INTERCEPT
    logits -= logits.max(axis=1, keepdims=True)
    return np.asarray(logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)))


def margins(logp: np.ndarray) -> np.ndarray:
    """Per segment: log P(music) - log max P(mock kind)."""
    return np.asarray(logp[:, 0] - logp[:, 1:].max(axis=1))


def verdict_from_features(feats: np.ndarray) -> MusicVerdict:
    if feats.shape[0] == 0:
        return MusicVerdict(False, "silence", float("-inf"), "the audio " + REASONS["silence"], 0)
    logp = predict_log_proba(feats)
    m = margins(logp)
    score = float(np.median(m))
    if score >= THRESHOLD:
        return MusicVerdict(True, "music", score, "sounds like music", len(m))
    # The mock kind most segments lean to.
    mock = logp[:, 1:].mean(axis=0)
    kind = KINDS[1 + int(np.argmax(mock))]
    return MusicVerdict(False, kind, score, "the audio " + REASONS[kind], len(m))


def classify(samples: np.ndarray, sample_rate_hz: int) -> MusicVerdict:
    """Music or mock audio? `samples` is float32 mono in [-1, 1] at any rate (8 kHz is native)."""
    return verdict_from_features(features(samples, sample_rate_hz))
