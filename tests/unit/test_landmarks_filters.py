"""The fast filters inside landmark extraction give bit-identical results to the
straightforward numpy/scipy formulations they replace (any difference would
change hashes, and stored fingerprints would no longer match)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from earmark_fingerprint import landmarks as lm

PEAK_SIZE = (lm.PEAK_NBHD_FRAMES, lm.PEAK_NBHD_BINS)
N_BINS = lm.MAX_BIN - lm.MIN_BIN


def scipy_local_max(db: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = ndimage.maximum_filter(db, size=PEAK_SIZE, mode="nearest")
    return out


# Frame counts below, at and just above the window (7), and bin counts below,
# at and around the window (21), besides the real width.
SHAPES = [
    (1, N_BINS),
    (2, N_BINS),
    (3, N_BINS),
    (6, N_BINS),
    (7, N_BINS),
    (8, N_BINS),
    (153, N_BINS),
    (1, 1),
    (5, 1),
    (4, 3),
    (9, 20),
    (9, 21),
    (9, 22),
    (40, 64),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_local_max_matches_scipy_on_noise(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(hash(shape) % 2**32)
    db = (rng.standard_normal(shape) * 20.0 - 60.0).astype(np.float32)
    got = lm._local_max(db)
    assert got.shape == db.shape
    assert got.dtype == np.float32
    assert np.array_equal(got, scipy_local_max(db))


@pytest.mark.parametrize("shape", SHAPES)
def test_local_max_matches_scipy_with_ties(shape: tuple[int, int]) -> None:
    # Few distinct values: plateaus, ties within and across windows, and the
    # clamp value (-120 dB) that silence produces.
    rng = np.random.default_rng(1 + hash(shape) % 2**32)
    levels = np.array([-120.0, -80.0, -3.5, 0.0, 6.0], np.float32)
    db = levels[rng.integers(0, levels.size, shape)]
    assert np.array_equal(lm._local_max(db), scipy_local_max(db))
    flat = np.full(shape, -120.0, np.float32)
    assert np.array_equal(lm._local_max(flat), scipy_local_max(flat))


def test_local_max_matches_scipy_with_infinities_and_nan() -> None:
    rng = np.random.default_rng(7)
    db = rng.standard_normal((30, N_BINS)).astype(np.float32)
    db[3, 5] = np.inf
    db[20, 400] = -np.inf
    assert np.array_equal(lm._local_max(db), scipy_local_max(db))
    # NaN (an FFT overflowed by absurd samples) falls back to scipy itself.
    db[10, 100] = np.nan
    assert np.array_equal(lm._local_max(db), scipy_local_max(db), equal_nan=True)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8, 16, 17, 21, 33])
@pytest.mark.parametrize("step", [1, 3])
def test_sliding_max_flat_matches_naive(size: int, step: int) -> None:
    rng = np.random.default_rng(size * 10 + step)
    n = 200
    src = rng.integers(-5, 5, n).astype(np.float32)  # many ties
    expected = np.array(
        [src[i : i + size * step : step].max() for i in range(n - (size - 1) * step)],
        np.float32,
    )
    res, _, length = lm._sliding_max_flat(src.copy(), np.empty_like(src), n, size, step)
    assert length == expected.size
    assert np.array_equal(res[:length], expected)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (17, 64)])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 1.0])
def test_nonzero_2d_matches_numpy(shape: tuple[int, int], density: float) -> None:
    rng = np.random.default_rng(3)
    mask = rng.random(shape) < density
    rows, cols = lm._nonzero_2d(mask)
    ref_rows, ref_cols = np.nonzero(mask)
    assert np.array_equal(rows, ref_rows) and rows.dtype == ref_rows.dtype
    assert np.array_equal(cols, ref_cols) and cols.dtype == ref_cols.dtype


def reference_log_spectrogram(
    x: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """The spectrogram as first written, with a fresh array per step."""
    frames = sliding_window_view(x, lm.N_FFT)[:: lm.HOP] * lm._WINDOW
    spec = scipy.fft.rfft(frames, axis=1)[:, lm.MIN_BIN : lm.MAX_BIN]
    mag = np.abs(spec) * lm._MAG_SCALE
    audible = mag > lm._FLOOR_LIN
    db = np.log10(np.maximum(mag, lm._CLAMP_LIN), dtype=np.float32) * np.float32(20.0)
    return db, audible


def reference_candidates(
    x: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """Peak candidates and prominences as first written: scipy's maximum filter,
    prominence over the whole spectrogram, 2-D nonzero."""
    db, audible = reference_log_spectrogram(x)
    local_max = scipy_local_max(db)
    local_mean = ndimage.uniform_filter(
        db, size=(lm.MEAN_NBHD_FRAMES, lm.MEAN_NBHD_BINS), mode="nearest"
    )
    prominence = db - local_mean
    is_peak = (db == local_max) & audible & (prominence >= lm.MIN_PROMINENCE_DB)
    t, b = np.nonzero(is_peak)
    return t, b, prominence[t, b]


def signals() -> dict[str, npt.NDArray[np.float32]]:
    rng = np.random.default_rng(11)
    sr = lm.SAMPLE_RATE_HZ
    t = np.arange(3 * sr) / sr
    return {
        "noise": (rng.standard_normal(3 * sr) * 0.1).astype(np.float32),
        "tones": (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1234.5 * t)).astype(
            np.float32
        ),
        "square": (0.4 * np.sign(np.sin(2 * np.pi * 330 * t))).astype(np.float32),
        "three_frames": (rng.standard_normal(lm.N_FFT + 2 * lm.HOP + 17) * 0.3).astype(np.float32),
        "one_frame": (rng.standard_normal(lm.N_FFT) * 0.3).astype(np.float32),
        "silence": np.zeros(2 * sr, np.float32),
        "strided": (rng.standard_normal(4 * sr) * 0.1).astype(np.float32)[::2],
    }


@pytest.mark.parametrize("name", list(signals()))
def test_log_spectrogram_matches_reference(name: str) -> None:
    x = signals()[name]
    db, audible = lm._log_spectrogram(x)
    ref_db, ref_audible = reference_log_spectrogram(x)
    assert db.dtype == ref_db.dtype
    assert np.array_equal(db, ref_db)
    assert np.array_equal(audible, ref_audible)


@pytest.mark.parametrize("name", list(signals()))
def test_peaks_match_reference(name: str) -> None:
    x = signals()[name]
    got = lm._find_peaks_subbin(x)
    t, b, prom = reference_candidates(x)
    if t.size == 0:
        assert all(a.size == 0 for a in got)
        return
    keep = lm._thin_to_density(t, prom)
    t, b = t[keep], b[keep]
    db, _ = reference_log_spectrogram(x)
    expected = (
        t.astype(np.int64),
        lm._subframe_time(db, t, b),
        b.astype(np.int64) + lm.MIN_BIN,
        lm._subbin_frequency(db, t, b) + lm.MIN_BIN,
    )
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype
        assert np.array_equal(g, e)
