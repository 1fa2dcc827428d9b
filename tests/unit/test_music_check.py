"""Music / mock-audio classifier and clipping check, on generated audio."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import resample_poly

from bench import synthetic
from earmark_ingest import music_check as mc

SR = mc.ANALYSIS_RATE_HZ
N = 20 * SR
RNG = np.random.default_rng(7)


def _colored(slope_db_oct: float) -> np.ndarray:
    spec = np.fft.rfft(RNG.standard_normal(N))
    f = np.fft.rfftfreq(N, 1 / SR)
    f[0] = f[1]
    x = np.fft.irfft(spec * (f / 1000) ** (slope_db_oct / 6.02), N)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def _sine(freq: float = 1000.0) -> np.ndarray:
    t = np.arange(N) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _sweep() -> np.ndarray:
    t = np.arange(N) / SR
    f = 50 * (3900 / 50) ** (t / t[-1])
    return (0.5 * np.sin(2 * np.pi * np.cumsum(f) / SR)).astype(np.float32)


def _clicks(period_s: float = 0.5) -> np.ndarray:
    x = np.zeros(N, dtype=np.float32)
    x[:: int(period_s * SR)] = 0.8
    return x


def _dtmf() -> np.ndarray:
    x = np.zeros(N)
    t = np.arange(int(0.15 * SR)) / SR
    pairs = [(697, 1209), (770, 1336), (852, 1477), (941, 1336)]
    for i, pos in enumerate(range(0, N - t.size, int(0.3 * SR))):
        lo, hi = pairs[i % 4]
        x[pos : pos + t.size] = 0.25 * (np.sin(2 * np.pi * lo * t) + np.sin(2 * np.pi * hi * t))
    return x.astype(np.float32)


def _speechlike() -> np.ndarray:
    from bench.music_check_data import formant_speech

    return formant_speech(np.random.default_rng(3), N)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_synthetic_songs_are_music(seed: int) -> None:
    v = mc.classify(synthetic.song(seed, 20.0), 22050)  # resampled to 8 kHz inside
    assert v.is_music and v.kind == "music", v
    assert v.score >= mc.THRESHOLD


def test_song_at_native_rate_and_quiet_is_music() -> None:
    x = resample_poly(synthetic.song(11, 20.0), 320, 882).astype(np.float32) * 0.03
    assert mc.classify(x, SR).is_music


@pytest.mark.parametrize(
    "name,make,kinds",
    [
        ("white noise", lambda: (0.2 * RNG.standard_normal(N)).astype(np.float32), {"noise"}),
        ("pink noise", lambda: _colored(-3.0), {"noise"}),
        ("brown noise", lambda: _colored(-6.0), {"noise"}),
        ("1 kHz sine", _sine, {"tone"}),
        ("100 Hz sine", lambda: _sine(100.0), {"tone"}),
        ("log sweep", _sweep, {"sweep", "tone"}),
        ("click train", _clicks, {"clicks", "blips"}),
        ("dtmf digits", _dtmf, {"dtmf", "tone"}),
        ("speech-like", _speechlike, {"speech"}),
    ],
)
def test_mocks_are_not_music(name: str, make, kinds: set[str]) -> None:  # type: ignore[no-untyped-def]
    v = mc.classify(make(), SR)
    assert not v.is_music, (name, v)
    assert v.kind in kinds, (name, v)
    assert (v.reason and "not music" in v.reason) or v.kind == "speech"


def test_silence_and_empty() -> None:
    assert mc.classify(np.zeros(N, dtype=np.float32), SR).kind == "silence"
    v = mc.classify(np.zeros(0, dtype=np.float32), SR)
    assert not v.is_music and v.kind == "silence"
    assert not mc.classify(np.full(100, 0.5, dtype=np.float32), SR).is_music


def test_non_finite_samples_do_not_break_it() -> None:
    x = synthetic.song(5, 12.0)
    x[::1000] = np.nan
    assert isinstance(mc.classify(x, 22050), mc.MusicVerdict)


def test_long_input_is_sampled_by_segments() -> None:
    x = np.tile(resample_poly(synthetic.song(4, 30.0), 320, 882).astype(np.float32), 10)  # 300 s
    feats = mc.features(x, SR)
    assert feats.shape == (mc.MAX_SEGMENTS, len(mc.FEATURES))
    assert mc.classify(x, SR).segments == mc.MAX_SEGMENTS


def test_clipping_ratio() -> None:
    song = synthetic.song(2, 10.0)
    assert mc.clipping_ratio(song) == 0.0
    assert not mc.is_clipped(song)
    loud = np.clip(song * 8, -1, 1)
    assert mc.clipping_ratio(loud) > 0.3
    assert mc.is_clipped(loud)
    # Still detected after ingest's resampling to 8 kHz.
    assert mc.is_clipped(resample_poly(loud, 320, 882))
    assert mc.clipping_ratio(np.array([1.0, -1.0, 0.5, 0.0])) == 0.5
    assert mc.clipping_ratio(np.zeros(0)) == 0.0
