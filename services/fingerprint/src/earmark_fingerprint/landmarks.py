"""Shazam-style landmark fingerprints (Wang 2003, audfprint lineage).

Pipeline: log-magnitude STFT -> sparse spectral peaks (2-D local maxima that stand
out from their surroundings, thinned to a target density) -> pairs of peaks
(anchor, target) in a target zone -> one 23-bit hash per pair, stored with the
anchor's frame index. Matching (see ``earmark_search.matching``) looks for many
hashes agreeing on one time offset.

Everything is vectorised numpy/scipy and deterministic: the same samples always
give the same hashes in the same order. See docs/landmarks.md for the rationale of
every constant below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

# 8 kHz keeps everything up to 4 kHz: the band that survives telephone band-pass,
# low-bitrate codecs and cheap microphones, and where most melodic peaks live.
# Compared with 11025 Hz it costs ~28 % less work per second for no loss of
# robustness (the 4-5.5 kHz band is the first to be destroyed by degradations).
SAMPLE_RATE_HZ: int = 8000
# Bump whenever any constant that changes hashes or times changes: stored
# fingerprints from another version are incomparable.
ALGORITHM_VERSION: int = 1

N_FFT: Final = 1024  # 128 ms window, 7.8 Hz bins: notes resolved, 512 usable bins
HOP: Final = 256  # 32 ms; 4x overlap keeps spectra stable when a query's frame
# grid is misaligned with the reference's by up to half a hop
FRAME_RATE_HZ: Final = SAMPLE_RATE_HZ / HOP  # 31.25 frames/s

# Peaks are only looked for in 200-3600 Hz: below, bins are few and dominated by
# rumble/bass that phones and small speakers drop; above, the resampler's
# anti-alias roll-off makes levels unreliable.
MIN_BIN: Final = 26  # 203 Hz
MAX_BIN: Final = 461  # 3602 Hz (exclusive)

FLOOR_DB: Final = -80.0  # absolute floor (0 dB = full-scale sine); below is silence
# The log is clamped much lower than FLOOR_DB so that the local mean (and so the
# peaks) of quiet passages don't depend on the playback level.
CLAMP_DB: Final = -120.0
PEAK_NBHD_BINS: Final = 21  # +-10 bins (+-78 Hz) ...
PEAK_NBHD_FRAMES: Final = 7  # ... x +-3 frames (+-96 ms) 2-D max filter
MEAN_NBHD_BINS: Final = 41  # local mean for the adaptive threshold (+-156 Hz ...
MEAN_NBHD_FRAMES: Final = 15  # ... x +-224 ms)
MIN_PROMINENCE_DB: Final = 3.0  # peak must clear its local mean by this much
DENSITY_HALF_WINDOW: Final = 8  # frames; density is enforced in a sliding +-256 ms
DENSITY_PER_WINDOW: Final = 16  # peaks kept per 17-frame window (~29 peaks/s)

FAN_OUT: Final = 6  # targets paired with each anchor
DT_MAX: Final = 63  # target zone: 1..63 frames after the anchor (6 bits) ...
DF_MAX: Final = 127  # ... and within +-127 bins (+-992 Hz) of it (8 bits)
_PAIR_SEARCH: Final = 64  # later peaks inspected per anchor when pairing

# Hash layout (23 bits used, top 9 reserved and zero in v1):
#   bits 22..14  f1       anchor bin, 9 bits (26..460 used)
#   bits 13..6   df+128   target bin - anchor bin, offset to 1..255, 8 bits
#   bits  5..0   dt       target frame - anchor frame, 1..63, 6 bits
F1_SHIFT: Final = 14
DF_SHIFT: Final = 6
DF_OFFSET: Final = 128
HASH_BITS: Final = 23

_WINDOW: Final = np.hanning(N_FFT + 2)[1:-1].astype(np.float32)  # no zero endpoints
# A full-scale sine then reads 0 dB in its bin, so FLOOR_DB is in dBFS.
_MAG_SCALE: Final = np.float32(2.0 / float(_WINDOW.sum()))
_FLOOR_LIN: Final = np.float32(10.0 ** (FLOOR_DB / 20.0))
_CLAMP_LIN: Final = np.float32(10.0 ** (CLAMP_DB / 20.0))

UInt32Array = npt.NDArray[np.uint32]


@dataclass(frozen=True)
class Landmarks:
    hashes: UInt32Array  # one per landmark
    times: UInt32Array  # frame index of the anchor peak, same length as hashes
    frame_rate_hz: float  # frames per second (sample_rate / hop)
    duration_s: float
    # The spectral peaks the landmarks were paired from, sorted by (frame, bin):
    # search verifies a weak vote by how many of a clip's peaks the candidate
    # track has at the voted alignment (docs/landmarks.md, "Peak verification").
    peak_times: UInt32Array = field(default_factory=lambda: np.zeros(0, np.uint32))
    peak_bins: UInt32Array = field(default_factory=lambda: np.zeros(0, np.uint32))


def extract_landmarks(samples: npt.ArrayLike) -> Landmarks:
    """Landmarks of float mono audio in [-1, 1] sampled at ``SAMPLE_RATE_HZ``.

    Output is sorted by (time, anchor bin, target time, target bin). Inputs too
    short for one frame, silent or below ``FLOOR_DB`` yield empty arrays.
    """
    x = _validated_samples(samples)
    duration_s = x.size / SAMPLE_RATE_HZ

    t, t_frac, f = _find_peaks(x)
    hashes, times = _pair_peaks(t, t_frac, f)
    return Landmarks(
        hashes=hashes,
        times=times,
        frame_rate_hz=FRAME_RATE_HZ,
        duration_s=duration_s,
        peak_times=t.astype(np.uint32),
        peak_bins=f.astype(np.uint32),
    )


def _validated_samples(samples: npt.ArrayLike) -> npt.NDArray[np.float32]:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected mono 1-D samples, got shape {x.shape}")
    if x.size and not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"expected numeric samples, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError("samples contain NaN or infinite values")
    return x


def _log_spectrogram(
    x: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Returns (dB spectrogram, above-floor mask), both shaped (frames, bins)."""
    frames = sliding_window_view(x, N_FFT)[::HOP] * _WINDOW
    spec = scipy.fft.rfft(frames, axis=1)[:, MIN_BIN:MAX_BIN]
    del frames
    db = np.abs(spec)
    del spec
    # The same float32 ufuncs as `20 * log10(max(|X| * scale, clamp))`, but in
    # place: fresh multi-MB temporaries cost more in page faults than the maths.
    # (An exactly aliased output keeps numpy on the same SIMD loops.)
    db *= _MAG_SCALE
    audible = db > _FLOOR_LIN
    # Clamping before the log keeps silence finite (no -inf, no warnings).
    np.maximum(db, _CLAMP_LIN, out=db)
    np.log10(db, out=db)
    db *= np.float32(20.0)
    return db, audible


def _find_peaks(
    x: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Peaks as (frame, sub-frame time, absolute bin), sorted by (frame, bin)."""
    t, t_frac, f, _ = _find_peaks_subbin(x)
    return t, t_frac, f


def _find_peaks_subbin(
    x: npt.NDArray[np.float32],
) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.float64]
]:
    """`_find_peaks` plus each peak's frequency in bins refined to sub-bin precision."""
    empty_f = np.zeros(0, np.float64)
    empty = (np.zeros(0, np.int64), empty_f, np.zeros(0, np.int64), empty_f)
    if x.size < N_FFT:
        return empty
    db, audible = _log_spectrogram(x)
    local_max = _local_max(db)
    local_mean = ndimage.uniform_filter(db, size=(MEAN_NBHD_FRAMES, MEAN_NBHD_BINS), mode="nearest")
    t, b = _nonzero_2d((db == local_max) & audible)  # row-major: sorted by (frame, bin)
    # Prominence only where it is needed: local maxima are a few % of all cells.
    prom = db[t, b] - local_mean[t, b]
    prominent = prom >= MIN_PROMINENCE_DB
    t, b, prom = t[prominent], b[prominent], prom[prominent]
    if t.size == 0:
        return empty
    keep = _thin_to_density(t, prom)
    t, b = t[keep], b[keep]
    return (
        t.astype(np.int64),
        _subframe_time(db, t, b),
        b.astype(np.int64) + MIN_BIN,
        _subbin_frequency(db, t, b) + MIN_BIN,
    )


def _local_max(db: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``ndimage.maximum_filter(db, (PEAK_NBHD_FRAMES, PEAK_NBHD_BINS), mode="nearest")``.

    Same values (a max is exact, whatever the order it is taken in), about 10x
    faster: a separable sliding max by window doubling (max of 2, of 4, of 8 ...,
    then two overlapping power-of-two windows cover any width), every step one
    contiguous numpy op over the whole array, ping-ponging between two buffers.
    Equality with scipy is pinned by tests/unit/test_landmarks_filters.py.
    """
    if np.isnan(db.max()):
        # np.maximum propagates NaN, scipy's filter doesn't: keep its answer. Only
        # samples near float32's range can overflow the FFT into NaN.
        nan_max: npt.NDArray[np.float32] = ndimage.maximum_filter(
            db, size=(PEAK_NBHD_FRAMES, PEAK_NBHD_BINS), mode="nearest"
        )
        return nan_max
    n_frames, n_bins = db.shape
    half_t, half_b = PEAK_NBHD_FRAMES // 2, PEAK_NBHD_BINS // 2
    width = n_bins + 2 * half_b
    # Edge replication on all sides == scipy's mode="nearest" per axis (corners
    # included, since the max along frames of a replicated column is replicated).
    padded = np.empty((n_frames + 2 * half_t, width), db.dtype)
    body = padded[half_t : half_t + n_frames]
    body[:, half_b : half_b + n_bins] = db
    body[:, :half_b] = db[:, :1]
    body[:, half_b + n_bins :] = db[:, -1:]
    padded[:half_t] = body[0]
    padded[half_t + n_frames :] = body[-1]
    flat = padded.reshape(-1)
    spare = np.empty_like(flat)
    # Along frames a row is `width` elements apart; the result is the
    # (n_frames, width) frame-filtered array, still padded along bins.
    flat, spare, length = _sliding_max_flat(flat, spare, flat.size, PEAK_NBHD_FRAMES, width)
    # Along bins, on the flattened array: windows that straddle two rows mix in
    # the next row's padding, but only the n_bins windows that start at each
    # row's first padded bin are read, and those lie within their row.
    flat, _, length = _sliding_max_flat(flat, spare, length, PEAK_NBHD_BINS, 1)
    assert length == n_frames * width - 2 * half_b
    out: npt.NDArray[np.float32] = flat[: n_frames * width].reshape(n_frames, width)[:, :n_bins]
    return out


def _sliding_max_flat(
    src: npt.NDArray[np.float32],
    spare: npt.NDArray[np.float32],
    length: int,
    size: int,
    step: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], int]:
    """Max of ``size`` elements ``step`` apart, for each start in ``src[:length]``.

    Returns (buffer holding the result, the other buffer, result length); the
    result is ``length - (size - 1) * step`` long. After each step element i holds
    the max of ``span`` elements from i; two windows of ``span`` that overlap or
    touch combine into one of up to ``2 * span``.
    """
    span = 1
    while span < size:
        shift = min(span, size - span)
        new_length = length - shift * step
        np.maximum(src[:new_length], src[shift * step : length], out=spare[:new_length])
        src, spare = spare, src
        length = new_length
        span += shift
    return src, spare, length


def _nonzero_2d(mask: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """``np.nonzero`` of a 2-D mask, same arrays in the same (row-major) order.

    numpy's 2-D nonzero is ~10x slower than its 1-D one plus a divmod.
    """
    rows, cols = np.divmod(np.flatnonzero(mask), mask.shape[1])
    return rows, cols


def _parabola_vertex(
    before: npt.NDArray[np.float64], centre: npt.NDArray[np.float64], after: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Offset in [-0.5, 0.5] of the vertex of the parabola through three samples."""
    curvature = before - 2.0 * centre + after
    safe = np.where(curvature < 0.0, curvature, -1.0)
    delta = np.where(curvature < 0.0, 0.5 * (before - after) / safe, 0.0)
    return np.clip(delta, -0.5, 0.5)


def _subbin_frequency(
    db: npt.NDArray[np.float32], t: npt.NDArray[np.intp], b: npt.NDArray[np.intp]
) -> npt.NDArray[np.float64]:
    """Peak frequency in bins (relative to MIN_BIN), refined like `_subframe_time`.

    Only rescaled queries use it: dividing a peak's frequency by a scale factor
    and rounding lands on the reference's bin far more often from the true
    (interpolated) frequency than from the integer bin.
    """
    last = db.shape[1] - 1
    centre = db[t, b].astype(np.float64)
    below = db[t, np.maximum(b - 1, 0)].astype(np.float64)
    above = db[t, np.minimum(b + 1, last)].astype(np.float64)
    return b + _parabola_vertex(below, centre, above)


def _subframe_time(
    db: npt.NDArray[np.float32], t: npt.NDArray[np.intp], b: npt.NDArray[np.intp]
) -> npt.NDArray[np.float64]:
    """Peak time in frames, refined to sub-frame precision.

    When a query's frame grid is offset from the reference's by a fraction of a
    hop, a peak's integer frame jumps between neighbours at random, and every dt
    it takes part in changes with it. The vertex of a parabola through the peak
    and its two time neighbours moves with the audio instead of the grid, so dt
    computed from it and then rounded is far more stable.
    """
    last = db.shape[0] - 1
    centre = db[t, b].astype(np.float64)
    before = db[np.maximum(t - 1, 0), b].astype(np.float64)
    after = db[np.minimum(t + 1, last), b].astype(np.float64)
    frac: npt.NDArray[np.float64] = t + _parabola_vertex(before, centre, after)
    return frac


def _thin_to_density(
    t: npt.NDArray[np.intp], prom: npt.NDArray[np.float32]
) -> npt.NDArray[np.bool_]:
    """Keep a peak if it ranks in the top DENSITY_PER_WINDOW of its +-window.

    A sliding window, unlike fixed blocks, makes the decision independent of where
    the frame grid starts, so a query clip keeps the same peaks as the reference.
    Loud passages can't hog the budget and quiet ones still get peaks.
    """
    n = t.size
    lo = np.searchsorted(t, t - DENSITY_HALF_WINDOW, side="left")
    hi = np.searchsorted(t, t + DENSITY_HALF_WINDOW, side="right")
    width = int((hi - lo).max())
    idx = lo[:, None] + np.arange(width)
    valid = idx < hi[:, None]
    idx = np.minimum(idx, n - 1)
    other = prom[idx]
    mine = prom[:, None]
    # Ties broken by index so the ranking is a strict total order (determinism).
    beats = (other > mine) | ((other == mine) & (idx < np.arange(n)[:, None]))
    stronger = np.count_nonzero(beats & valid, axis=1)
    keep: npt.NDArray[np.bool_] = stronger < DENSITY_PER_WINDOW
    return keep


def _pair_peaks(
    t: npt.NDArray[np.int64], t_frac: npt.NDArray[np.float64], f: npt.NDArray[np.int64]
) -> tuple[UInt32Array, UInt32Array]:
    """Pair each anchor with its FAN_OUT nearest-in-time peaks in the target zone."""
    n = t.size
    if n < 2:
        return np.zeros(0, np.uint32), np.zeros(0, np.uint32)
    width = min(_PAIR_SEARCH, n - 1)
    j = np.arange(n)[:, None] + np.arange(1, width + 1)
    in_range = j < n
    j = np.minimum(j, n - 1)
    dt = np.rint(t_frac[j] - t_frac[:, None]).astype(np.int64)
    df = f[j] - f[:, None]
    ok = in_range & (dt >= 1) & (dt <= DT_MAX) & (np.abs(df) <= DF_MAX)
    # Peaks are sorted by (frame, bin), so the first FAN_OUT valid columns are the
    # nearest targets in time.
    ok &= np.cumsum(ok, axis=1) <= FAN_OUT
    rows, cols = _nonzero_2d(ok)
    f1 = f[rows]
    hashes = (f1 << F1_SHIFT) | ((df[rows, cols] + DF_OFFSET) << DF_SHIFT) | dt[rows, cols]
    return hashes.astype(np.uint32), t[rows].astype(np.uint32)


def extract_query_landmarks(samples: npt.ArrayLike, shifts: int = 4) -> Landmarks:
    """Landmarks of a query clip, unioned over ``shifts`` sub-hop grid offsets.

    A clip's frame grid is offset from the reference's by an unknown fraction of a
    hop, which costs about half the matching hashes at the worst offset. Analysing
    the clip at several offsets (audfprint's query "shifts") and pooling the
    distinct (hash, time) pairs roughly doubles the aligned score for noisy clips,
    at ``shifts`` times the (small) cost of one extraction. Only for queries:
    references are indexed once, with ``extract_landmarks``.
    """
    if shifts < 1 or shifts > HOP:
        raise ValueError(f"shifts must be in 1..{HOP}, got {shifts}")
    x = np.asarray(samples)
    base = extract_landmarks(x)  # validates the input once
    if shifts == 1 or base.hashes.size == 0:
        return base
    hashes = [base.hashes]
    times = [base.times]
    for k in range(1, shifts):
        skip = k * HOP // shifts
        lm = extract_landmarks(x[skip:])
        hashes.append(lm.hashes)
        # Frame i of the shifted clip starts skip samples after frame i of the clip.
        times.append(np.rint(lm.times + skip / HOP).astype(np.uint32))
    packed = np.unique(
        (np.concatenate(hashes).astype(np.uint64) << np.uint64(32))
        | np.concatenate(times).astype(np.uint64)
    )
    # The same landmark seen from two grids often lands one frame apart; keeping
    # both would let one chance collision with the catalog vote twice inside the
    # matcher's +-1 frame window. Keep the first of each such run.
    step = np.diff(packed)
    keep = np.ones(packed.size, dtype=bool)
    keep[1:] = step > np.uint64(1)
    packed = packed[keep]
    return Landmarks(
        hashes=(packed >> np.uint64(32)).astype(np.uint32),
        times=(packed & np.uint64(0xFFFFFFFF)).astype(np.uint32),
        frame_rate_hz=base.frame_rate_hz,
        duration_s=base.duration_s,
        # One grid's peaks are enough: verification allows +-1 frame.
        peak_times=base.peak_times,
        peak_bins=base.peak_bins,
    )


# Frequency scales tried for a clip that matches nothing as it is: played faster
# or slower (radio, DJ pitch control: +-2-6 %) or pitch-shifted by up to a
# semitone (5.9 %). A clip whose peaks are divided by the right scale hashes like
# the reference again; hashes survive up to ~0.5 % of scale error (measured in
# docs/landmarks.md), hence 1 % steps. Time is not rescaled: pairs span < 2 s,
# where 6 % of tempo moves dt by less than the rounding already absorbs.
RESCALE_STEP: Final = 1.01
RESCALE_STEPS: Final = 6
RESCALE_FACTORS: Final[tuple[float, ...]] = tuple(
    RESCALE_STEP**k for k in range(-RESCALE_STEPS, RESCALE_STEPS + 1) if k
)
# A short clip's variants need a second sub-hop grid to keep enough landmarks; a
# long one has them to spare from one grid. Replayed on both query sets, one grid
# lost nothing at 10 s and one clip in 248 speed/pitch clips at 5 s (calibration
# set; none of 448 in the benchmark's), but many at 1-2 s; it halves the
# rescue's extraction and cuts its hashes by ~40 % (docs/landmarks.md). The
# threshold sits below 5 s so that a 5 s clip decoded a little short counts as 5 s.
RESCUE_ONE_GRID_MIN_S: Final = 4.5


def rescue_shifts(duration_s: float) -> int:
    """Sub-hop grids each rescaled variant of a clip this long is extracted from."""
    return 1 if duration_s >= RESCUE_ONE_GRID_MIN_S else 2


def extract_rescaled_query_landmarks(
    samples: npt.ArrayLike, scales: tuple[float, ...] = RESCALE_FACTORS, shifts: int | None = None
) -> list[Landmarks]:
    """Landmarks of a query clip as if its frequencies were divided by each scale.

    Peaks are found once per sub-hop shift (by default `rescue_shifts` of the
    clip's duration); only pairing and hashing are repeated per scale, on the
    peaks' interpolated frequencies divided by the scale. Frame times are the
    clip's own, so offsets mean what they always do.
    """
    x = _validated_samples(samples)
    duration_s = x.size / SAMPLE_RATE_HZ
    if shifts is None:
        shifts = rescue_shifts(duration_s)
    if shifts < 1 or shifts > HOP:
        raise ValueError(f"shifts must be in 1..{HOP}, got {shifts}")
    if any(not (0.5 < s < 2.0) for s in scales):
        raise ValueError(f"scales must lie in (0.5, 2), got {scales}")
    peaks = []
    for k in range(shifts):
        skip = k * HOP // shifts
        t, t_frac, _bins, freq = _find_peaks_subbin(x[skip:])
        peaks.append((t, t_frac, freq, skip / HOP))
    first_t, _, first_freq, _ = peaks[0]
    out = []
    for scale in scales:
        hashes, times = [], []
        for t, t_frac, freq, frame_shift in peaks:
            bins = np.rint(freq / scale).astype(np.int64)
            h, tt = _pair_peaks(t, t_frac, bins)
            hashes.append(h)
            times.append(np.rint(tt + frame_shift).astype(np.uint32))
        packed = np.unique(
            (np.concatenate(hashes).astype(np.uint64) << np.uint64(32))
            | np.concatenate(times).astype(np.uint64)
        )
        out.append(
            Landmarks(
                hashes=(packed >> np.uint64(32)).astype(np.uint32),
                times=(packed & np.uint64(0xFFFFFFFF)).astype(np.uint32),
                frame_rate_hz=FRAME_RATE_HZ,
                duration_s=duration_s,
                # The first grid's peaks, rescaled like the hashes, for verification.
                peak_times=first_t.astype(np.uint32),
                peak_bins=np.rint(first_freq / scale).astype(np.uint32),
            )
        )
    return out
