"""Fast checks of the benchmark query degradations on synthetic audio (no corpus)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import signal

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import degrade
from bench.corpus import CorpusTrack

SR = 16000


def _music_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Sum of a few harmonic tones plus a little noise, roughly -15 dBFS."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    x = np.zeros_like(t)
    for f0 in rng.uniform(110, 880, size=4):
        for h in range(1, 6):
            if f0 * h < SR / 2:
                x += np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi)) / h
    x += 0.05 * rng.standard_normal(t.size)
    return (0.2 * x / np.max(np.abs(x))).astype(np.float32)


def _snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    noise = noisy - clean
    return 10 * math.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))


def _band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    freqs, psd = signal.welch(x, SR, nperseg=2048)
    return float(psd[(freqs >= lo) & (freqs <= hi)].sum())


@pytest.fixture(scope="module")
def song() -> np.ndarray:
    return _music_like(8.0)


@pytest.mark.parametrize("snr", [0, 5, 10])
def test_pink_noise_snr(song: np.ndarray, snr: float) -> None:
    cond = degrade.conditions_by_name([f"pink_{snr}db"])[0]
    n = 3 * SR
    margin = SR // 2
    excerpt = song[: n + 2 * margin]
    out = cond.apply(excerpt, SR, np.random.default_rng(1), n, margin)
    assert out.size == n
    assert abs(_snr_db(song[margin : margin + n], out) - snr) < 0.5


def test_pink_noise_is_pink() -> None:
    x = degrade.pink_noise(1 << 16, np.random.default_rng(0))
    freqs, psd = signal.welch(x, SR, nperseg=4096)
    sel = (freqs > 50) & (freqs < 5000)
    slope = np.polyfit(np.log10(freqs[sel]), 10 * np.log10(psd[sel]), 1)[0]
    assert -11.0 < slope < -9.0  # 1/f power: -10 dB per decade
    assert abs(degrade.rms(x) - 1.0) < 1e-3


@pytest.mark.parametrize("snr", [0, 5, 10])
def test_babble_snr(song: np.ndarray, snr: float) -> None:
    pool = [_music_like(4.0, seed=s) for s in range(10, 16)]
    cond = degrade.conditions_by_name([f"babble_{snr}db"])[0]
    n = 2 * SR
    ctx = degrade.NoiseContext(babble_pool=pool)
    out = cond.apply(song[:n], SR, np.random.default_rng(2), n, 0, ctx)
    assert abs(_snr_db(song[:n], out) - snr) < 0.5


def test_babble_requires_four_sources() -> None:
    with pytest.raises(ValueError):
        degrade.babble_noise(SR, np.random.default_rng(0), [np.ones(2 * SR)] * 3)


@pytest.mark.parametrize("factor", [0.95, 0.98, 1.02, 1.05])
def test_speed_changes_length_by_factor(song: np.ndarray, factor: float) -> None:
    out = degrade.resample_speed(song, factor)
    assert abs(out.size - song.size / factor) <= 2


def test_speed_condition_consumes_length_times_speed(song: np.ndarray) -> None:
    cond = degrade.conditions_by_name(["speed_+5pct"])[0]
    n = 2 * SR
    margin = SR // 4
    excerpt = song[: round(n * cond.speed) + 2 * margin]
    out = cond.apply(excerpt, SR, np.random.default_rng(0), n, margin)
    assert out.size == n
    # Query time t must map to original time margin + t * speed.
    ref = degrade.resample_speed(song, cond.speed)
    start = round(margin / cond.speed)
    assert np.corrcoef(out, ref[start : start + n])[0, 1] > 0.999


def test_bandpass_removes_out_of_band_energy() -> None:
    x = degrade.pink_noise(4 * SR, np.random.default_rng(3))
    y = degrade.bandpass(x, SR)
    assert _band_energy(y, 0, 150) < 1e-3 * _band_energy(x, 0, 150)
    assert _band_energy(y, 5000, SR / 2) < 1e-3 * _band_energy(x, 5000, SR / 2)
    passband = _band_energy(y, 600, 3000) / _band_energy(x, 600, 3000)
    assert 0.8 < passband < 1.2


def test_room_is_band_limited_and_aligned(song: np.ndarray) -> None:
    cond = degrade.conditions_by_name(["room"])[0]
    n, margin = 4 * SR, SR
    out = cond.apply(song[: n + 2 * margin], SR, np.random.default_rng(4), n, margin)
    assert out.size == n
    assert _band_energy(out, 0, 150) < 1e-2 * _band_energy(out, 400, 3000)
    # Direct path at t=0 and zero-phase band-pass: no systematic delay.
    ref = degrade.bandpass(song[margin : margin + n], SR)
    xc = signal.correlate(out, ref, mode="full", method="fft")
    lag = int(np.argmax(xc)) - (n - 1)
    assert abs(lag) <= SR // 200


def test_room_impulse_response_rt60() -> None:
    ir = degrade.room_impulse_response(SR, np.random.default_rng(0), rt60_s=0.6)
    # Schroeder backward integration; fit the -5..-25 dB decay, extrapolate to -60.
    edc = np.cumsum(ir[::-1].astype(np.float64) ** 2)[::-1]
    edc_db = 10 * np.log10(edc / edc[0])
    sel = (edc_db < -5) & (edc_db > -25)
    t = np.flatnonzero(sel) / SR
    slope = np.polyfit(t, edc_db[sel], 1)[0]
    assert 0.5 < -60 / slope < 0.7


def test_mp3_roundtrip_keeps_length(song: np.ndarray) -> None:
    x = song[: 3 * SR]
    y = degrade.mp3_roundtrip(x, SR)
    assert abs(y.size - x.size) / SR < 0.1
    # Encoder delay is removed (gapless header), so it stays sample-aligned.
    m = min(x.size, y.size)
    assert np.corrcoef(x[:m], y[:m])[0, 1] > 0.9


def test_split_catalog_deterministic_and_stratified() -> None:
    tracks = [
        CorpusTrack(Path(f"/c/{p}/{i}.ogg"), p, f"{p}/{i}.ogg", 60.0, "vorbis")
        for p, n in (("a", 10), ("b", 5), ("c", 20))
        for i in range(n)
    ]
    cat1, held1 = degrade.split_catalog(tracks, seed=7)
    cat2, held2 = degrade.split_catalog(list(reversed(tracks)), seed=7)
    assert (cat1, held1) == (cat2, held2)
    assert len(held1) == 7 and len(cat1) == 28
    assert {t.package for t in held1} == {"a", "b", "c"}
    assert not {t.track_id for t in cat1} & {t.track_id for t in held1}
    assert degrade.split_catalog(tracks, seed=8) != (cat1, held1)


def _fake_tracks(n: int, package: str) -> list[CorpusTrack]:
    return [
        CorpusTrack(Path(f"/fake/{package}/{i}"), package, f"{package}/{i}", 12.0, "pcm")
        for i in range(n)
    ]


def _fake_decoder(path: Path, sr: int) -> np.ndarray:
    return _music_like(12.0, seed=int(path.name) + 100 * len(path.parent.name))


def test_build_queries_deterministic() -> None:
    catalog = _fake_tracks(1, "cat")
    # 3 held-out tracks x 3 babble chunks: 6 chunks remain once a negative's own
    # track is excluded, enough for the 4-6 source mixture.
    held = _fake_tracks(3, "held")
    conds = degrade.conditions_by_name(["clean", "pink_5db", "babble_5db", "speed_-2pct"])

    def build(seed: int) -> list[degrade.Query]:
        return degrade.build_queries(
            catalog, (1, 3), conds, 1, seed, held_out=held, decoder=_fake_decoder
        )

    a, b, c = build(5), build(5), build(6)
    assert len(a) == (1 + 3) * 2 * 4
    assert [q.manifest_row("") for q in a] == [q.manifest_row("") for q in b]
    assert all(np.array_equal(x.audio, y.audio) for x, y in zip(a, b, strict=True))
    assert [q.offset_s for q in a] != [q.offset_s for q in c]
    assert sum(q.negative for q in a) == 3 * 2 * 4
    for q in a:
        assert q.audio.dtype == np.float32
        assert q.audio.size == round(q.length_s * SR)
        assert q.offset_s >= 0 and q.offset_s + q.length_s * q.speed <= 12.0
        assert np.max(np.abs(q.audio)) <= degrade.PEAK_LIMIT + 1e-6


def test_clean_query_is_exact_excerpt() -> None:
    catalog = _fake_tracks(1, "cat")
    (q,) = degrade.build_queries(
        catalog, (2,), degrade.conditions_by_name(["clean"]), decoder=_fake_decoder
    )
    src = _fake_decoder(catalog[0].path, SR)
    start = round(q.offset_s * SR)
    np.testing.assert_array_equal(q.audio, src[start : start + 2 * SR])
