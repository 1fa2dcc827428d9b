"""Landmark extraction: determinism, hash layout, edge cases, and end-to-end
clip identification against a small synthetic catalog (with rank_matches)."""

from __future__ import annotations

import warnings
from functools import cache

import numpy as np
import pytest
from scipy import signal

from earmark_fingerprint.landmarks import (
    DF_MAX,
    DF_OFFSET,
    DF_SHIFT,
    DT_MAX,
    F1_SHIFT,
    HASH_BITS,
    HOP,
    MAX_BIN,
    MIN_BIN,
    N_FFT,
    SAMPLE_RATE_HZ,
    Landmarks,
    extract_landmarks,
    extract_query_landmarks,
)
from earmark_search.matching import MatchCandidate, rank_matches

SR = SAMPLE_RATE_HZ
TRACK_KEY_BASE = 1000
N_CATALOG = 20  # plus the long track the clips are cut from


def synth_music(seed: int, seconds: float) -> np.ndarray:
    """Random polyphonic "music": three voices of decaying harmonic notes with
    per-note timbre and continuous pitch, on a per-track tempo, plus noise-burst
    percussion. Distinct seeds give unrelated tracks."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    out = np.zeros(n, np.float32)
    beat = rng.uniform(0.1, 0.16)
    harm = np.arange(1, 7, dtype=np.float32)[:, None]
    for voice in range(3):
        pos = int(rng.integers(0, SR // 4))
        while pos < n:
            dur = int(beat * rng.integers(1, 5) * SR)
            length = min(dur, n - pos)
            midi = rng.uniform(45, 88) if voice else rng.uniform(33, 60)
            f0 = np.float32(440.0 * 2.0 ** ((midi - 69) / 12.0))
            tt = np.arange(length, dtype=np.float32) / np.float32(SR)
            amps = (rng.uniform(0.3, 1.0, (6, 1)) / harm * (harm * f0 < 3900)).astype(np.float32)
            phase = rng.uniform(0, 6.28, (6, 1)).astype(np.float32)
            tone = (amps * np.sin(np.float32(2 * np.pi) * f0 * harm * tt + phase)).sum(0)
            env = np.minimum(1.0, tt / np.float32(0.01)) * np.exp(
                -tt * np.float32(rng.uniform(2, 6))
            )
            out[pos : pos + length] += np.float32(rng.uniform(0.2, 0.5)) * tone * env
            pos += dur
    burst_len = SR // 10
    hits = np.arange(0, n - burst_len, int(beat * 2 * SR))
    hits = hits[rng.random(hits.size) < 0.5]
    decay = np.exp(-np.arange(burst_len) / SR * 40).astype(np.float32)
    bursts = (0.3 * rng.standard_normal((hits.size, burst_len))).astype(np.float32) * decay
    for h, b in zip(hits, bursts, strict=True):
        out[h : h + burst_len] += b
    out /= np.float32(float(np.abs(out).max()) * 1.05)
    return out


@cache
def catalog() -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Track 0 is 60 s long (clips come from it); the others are 30 s decoys."""
    tracks = [synth_music(100, 60.0)] + [synth_music(101 + i, 30.0) for i in range(N_CATALOG)]
    lms = [extract_landmarks(x) for x in tracks]
    hashes = np.concatenate([lm.hashes for lm in lms])
    times = np.concatenate([lm.times for lm in lms])
    keys = np.concatenate(
        [np.full(lm.hashes.size, TRACK_KEY_BASE + i, np.int64) for i, lm in enumerate(lms)]
    )
    return tracks, hashes, keys, times


def identify(clip: np.ndarray) -> list[MatchCandidate]:
    _, hashes, keys, times = catalog()
    q = extract_query_landmarks(clip)
    # What the database returns: every catalog row whose hash is in the query.
    rows = np.isin(hashes, q.hashes)
    return rank_matches(q.hashes, q.times, hashes[rows], keys[rows], times[rows])


def with_noise(x: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(x.size).astype(np.float32)
    scale = np.float32(np.sqrt(np.mean(x**2) / np.mean(noise**2) / 10 ** (snr_db / 10)))
    noisy: np.ndarray = (x + scale * noise).astype(np.float32)
    return noisy


def hash_fields(h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h = h.astype(np.int64)
    f1 = h >> F1_SHIFT
    df = ((h >> DF_SHIFT) & 0xFF) - DF_OFFSET
    dt = h & 0x3F
    return f1, df, dt


# --- extraction -------------------------------------------------------------


def test_same_audio_gives_identical_landmarks() -> None:
    x = synth_music(7, 10.0)
    a = extract_landmarks(x)
    b = extract_landmarks(x.copy())
    c = extract_landmarks(x.astype(np.float64))
    assert a.hashes.size > 0
    for other in (b, c):
        np.testing.assert_array_equal(a.hashes, other.hashes)
        np.testing.assert_array_equal(a.times, other.times)


def test_output_types_layout_and_ranges() -> None:
    x = synth_music(8, 20.0)
    lm = extract_landmarks(x)
    assert lm.hashes.dtype == np.uint32 and lm.times.dtype == np.uint32
    assert lm.hashes.shape == lm.times.shape
    assert lm.frame_rate_hz == pytest.approx(SR / HOP)
    assert lm.duration_s == pytest.approx(20.0)
    n_frames = 1 + (x.size - N_FFT) // HOP
    assert int(lm.times.max()) < n_frames
    assert np.all(np.diff(lm.times.astype(np.int64)) >= 0), "sorted by anchor time"
    assert int(lm.hashes.max()) < 1 << HASH_BITS
    f1, df, dt = hash_fields(lm.hashes)
    assert f1.min() >= MIN_BIN and f1.max() < MAX_BIN
    assert np.abs(df).max() <= DF_MAX
    assert dt.min() >= 1 and dt.max() <= DT_MAX
    # The target peak lies inside the analysed band too.
    assert (f1 + df).min() >= MIN_BIN and (f1 + df).max() < MAX_BIN


def test_density_is_moderate_and_spread_in_time() -> None:
    x = synth_music(9, 30.0)
    lm = extract_landmarks(x)
    per_s = lm.hashes.size / lm.duration_s
    assert 60 < per_s < 400
    seconds = (lm.times / lm.frame_rate_hz).astype(int)
    per_second = np.bincount(seconds, minlength=29)[:29]
    assert per_second.min() > 0.25 * per_second.mean(), "no second left without landmarks"


@pytest.mark.parametrize("n", [0, 1, N_FFT - 1])
def test_too_short_input_gives_empty(n: int) -> None:
    lm = extract_landmarks(np.zeros(n, np.float32))
    assert lm.hashes.size == 0 and lm.times.size == 0
    assert lm.hashes.dtype == np.uint32 and lm.times.dtype == np.uint32
    assert lm.duration_s == pytest.approx(n / SR)


@pytest.mark.parametrize("level", [0.0, 1e-6])
def test_silence_gives_empty_without_warnings(level: float) -> None:
    x = level * np.random.default_rng(0).standard_normal(5 * SR).astype(np.float32)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        lm = extract_landmarks(x)
        q = extract_query_landmarks(x)
    assert lm.hashes.size == 0 and q.hashes.size == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_rejected(bad: float) -> None:
    x = synth_music(1, 2.0)
    x[1234] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        extract_landmarks(x)


def test_non_mono_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="1-D"):
        extract_landmarks(np.zeros((2, SR), np.float32))


def test_level_change_keeps_most_landmarks() -> None:
    x = synth_music(11, 10.0)
    a = extract_landmarks(x)
    b = extract_landmarks(x * np.float32(0.05))  # -26 dB
    shared = np.intersect1d(a.hashes, b.hashes).size
    assert shared >= 0.8 * np.unique(a.hashes).size


def test_query_shifts_contain_the_plain_landmarks() -> None:
    x = synth_music(12, 5.0)
    plain = extract_landmarks(x)
    shifted = extract_query_landmarks(x)
    np.testing.assert_array_equal(extract_query_landmarks(x, shifts=1).hashes, plain.hashes)
    assert shifted.hashes.size > plain.hashes.size
    assert np.isin(plain.hashes, shifted.hashes).mean() > 0.95
    with pytest.raises(ValueError):
        extract_query_landmarks(x, shifts=0)


# --- identification against a catalog ---------------------------------------


def _clip(seconds: float, seed: int) -> tuple[np.ndarray, float]:
    track = catalog()[0][0]
    rng = np.random.default_rng(seed)
    start = int(rng.integers(0, track.size - int(seconds * SR)))
    return track[start : start + int(seconds * SR)], start / HOP


def _assert_found(matches: list[MatchCandidate], expected_offset: float) -> None:
    assert matches, "no match"
    best = matches[0]
    assert best.track_key == TRACK_KEY_BASE
    assert abs(best.offset_frames - expected_offset) <= 1
    assert best.confidence > 0.5


@pytest.mark.parametrize(("seconds", "seed"), [(2.0, 1), (3.0, 2), (5.0, 3)])
def test_clip_matches_its_track_at_the_right_offset(seconds: float, seed: int) -> None:
    clip, offset = _clip(seconds, seed)
    _assert_found(identify(clip), offset)


def test_plain_extraction_also_matches() -> None:
    _, hashes, keys, times = catalog()
    clip, offset = _clip(3.0, 4)
    q = extract_landmarks(clip)
    rows = np.isin(hashes, q.hashes)
    _assert_found(rank_matches(q.hashes, q.times, hashes[rows], keys[rows], times[rows]), offset)


@pytest.mark.parametrize(("snr_db", "seconds"), [(10.0, 3.0), (5.0, 5.0)])
def test_clip_matches_with_white_noise(snr_db: float, seconds: float) -> None:
    clip, offset = _clip(seconds, 5)
    _assert_found(identify(with_noise(clip, snr_db, seed=6)), offset)


def test_clip_matches_through_a_phone_band_pass() -> None:
    clip, offset = _clip(4.0, 7)
    sos = signal.butter(4, [300, 3400], btype="bandpass", fs=SR, output="sos")
    phone = with_noise(signal.sosfilt(sos, clip).astype(np.float32), 15.0, seed=8)
    _assert_found(identify(phone), offset)


@pytest.mark.parametrize("seed", [900, 901, 902])
def test_clip_not_in_catalog_gives_no_match(seed: int) -> None:
    outsider = synth_music(seed, 10.0)
    assert identify(outsider[SR : 6 * SR]) == []


def test_silent_clip_gives_no_match() -> None:
    assert identify(np.zeros(3 * SR, np.float32)) == []


def test_landmarks_is_frozen() -> None:
    lm = extract_landmarks(np.zeros(0, np.float32))
    assert isinstance(lm, Landmarks)
    with pytest.raises(AttributeError):
        lm.duration_s = 1.0  # type: ignore[misc]
