"""The shipped neural fingerprint model and its numpy frontend (no torch)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from bench.synthetic import add_noise, song
from earmark_fingerprint import neural_frontend as fe
from earmark_fingerprint.neural import (
    CATALOG_HOP_S,
    MAX_QUERY_SEGMENTS,
    MAX_VIEW_SEGMENTS,
    QUERY_HOP_S,
    NeuralEmbedder,
    default_embedder,
    default_providers,
    hop_frames,
    pitch_view_scales,
    query_hop_s,
)

SR = fe.SAMPLE_RATE_HZ


@pytest.fixture(scope="module")
def embedder() -> NeuralEmbedder:
    return default_embedder()


def test_serving_does_not_import_torch(embedder: NeuralEmbedder) -> None:
    embedder.embed(song(1, 3.0, SR))
    assert "torch" not in sys.modules


def test_shipped_model_loads_on_the_cpu(embedder: NeuralEmbedder) -> None:
    assert embedder.dim == embedder.meta["dim"] == 128
    assert "CPUExecutionProvider" in embedder.providers
    assert embedder.meta["parameters"] <= 5_000_000
    assert default_embedder() is embedder  # loaded once per process


def test_cuda_is_preferred_only_when_available() -> None:
    assert default_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert default_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_embeddings_are_unit_length_and_deterministic(embedder: NeuralEmbedder) -> None:
    x = song(2, 12.0, SR) * 0.5
    first = embedder.embed(x)
    again = NeuralEmbedder(embedder.path, threads=1, batch_size=3).embed(x)
    assert first.vectors.shape == (first.times_s.size, 128)
    np.testing.assert_allclose(np.linalg.norm(first.vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(first.vectors, again.vectors, atol=1e-6)
    np.testing.assert_allclose(np.diff(first.times_s), CATALOG_HOP_S)


def test_short_and_empty_clips(embedder: NeuralEmbedder) -> None:
    assert embedder.embed(np.zeros(0, np.float32)).vectors.shape == (0, 128)
    one = embedder.embed(song(3, 1.0, SR))  # 1 s is a little under one segment: padded
    assert one.vectors.shape == (1, 128) and one.times_s.tolist() == [0.0]
    with pytest.raises(ValueError):
        embedder.embed(np.zeros((2, 8000), np.float32))
    with pytest.raises(ValueError):
        hop_frames(0.01)


@pytest.mark.parametrize("seconds", [0.0, 0.6, 1.0, 5.0, 10.0])
def test_views_embedded_together_equal_each_embedded_alone(
    embedder: NeuralEmbedder, seconds: float
) -> None:
    x = song(5, seconds, SR) if seconds else np.zeros(0, np.float32)
    views = [(0.125, 1.0), *[(0.375, s) for s in pitch_view_scales()]]
    together = embedder.embed_views(x, views)
    assert len(together) == len(views)
    for (hop_s, scale), got in zip(views, together, strict=True):
        alone = embedder.embed(x, hop_s, scale)
        np.testing.assert_array_equal(got.times_s, alone.times_s)
        np.testing.assert_allclose(got.vectors, alone.vectors, atol=1e-6)
        assert got.vectors.shape == (alone.times_s.size, 128)


def test_no_views_asked_embeds_nothing(embedder: NeuralEmbedder) -> None:
    assert embedder.embed_views(song(6, 2.0, SR), []) == []


def test_the_service_embeds_on_one_thread_per_run(embedder: NeuralEmbedder) -> None:
    # Concurrent requests are the service's parallelism (docs/neural.md).
    options = embedder.session.get_session_options()
    assert options.intra_op_num_threads == 1


def test_dense_query_hop(embedder: NeuralEmbedder) -> None:
    res = embedder.embed(song(4, 3.0, SR), hop_s=0.125)
    np.testing.assert_allclose(np.diff(res.times_s), 0.125)


@pytest.mark.parametrize("cap", [MAX_QUERY_SEGMENTS, MAX_VIEW_SEGMENTS])
@pytest.mark.parametrize("seconds", [0.5, 1.0, 3.0, 5.0, 5.2, 10.0, 10.5, 30.0, 60.0])
def test_query_hop_bounds_the_segments(embedder: NeuralEmbedder, seconds: float, cap: int) -> None:
    """A query keeps the dense hop while it has at most `cap` segments; a longer
    one gets the densest odd multiple of half the catalog hop that fits."""
    clip = song(5, seconds, SR)
    hop = query_hop_s(clip.size, cap)
    segments = embedder.embed(clip, hop).times_s.size
    assert 1 <= segments <= cap
    half_hops = hop / (CATALOG_HOP_S / 2)
    assert half_hops == pytest.approx(round(half_hops)) and round(half_hops) % 2 == 1
    if hop > QUERY_HOP_S:  # the next denser allowed hop would have been too many
        denser = embedder.embed(clip, hop - CATALOG_HOP_S).times_s.size
        assert denser > cap
    # The benchmark's lengths keep the dense hop: 10 s for the clip, 5 s for a view.
    if seconds <= (10.0 if cap == MAX_QUERY_SEGMENTS else 5.0):
        assert hop == QUERY_HOP_S


def test_offset_clip_matches_its_own_track_segments(embedder: NeuralEmbedder) -> None:
    """A noisy clip cut 0.5 s into a song finds that song's segments at the right times."""
    own = song(11, 20.0, SR) * 0.5
    other = song(12, 20.0, SR) * 0.5
    cat_own, cat_other = embedder.embed(own, hop_s=0.5), embedder.embed(other, hop_s=0.5)
    clip = add_noise(own[SR // 2 : SR // 2 + 6 * SR], snr_db=10, seed=5)
    query = embedder.embed(clip, hop_s=0.5)
    sims_own = query.vectors @ cat_own.vectors.T  # [query segments, own segments]
    sims_other = query.vectors @ cat_other.vectors.T
    # Query segment j starts at 0.5 + 0.5 j s in the song: own segment j + 1.
    j = np.arange(query.times_s.size)
    aligned = sims_own[j, j + 1]
    assert np.all(aligned > sims_other.max(axis=1))
    assert np.mean(np.argmax(sims_own, axis=1) == j + 1) >= 0.8


def test_frontend_whole_signal_slices_equal_batch_excerpts() -> None:
    x = song(5, 4.0, SR)
    mel = fe.log_mel(x)
    starts = fe.segment_starts(mel.shape[0], 16)
    sliced = fe.segments(mel, starts)
    excerpts = np.stack([x[s * fe.HOP : s * fe.HOP + fe.SEGMENT_SAMPLES] for s in starts])
    np.testing.assert_allclose(sliced, fe.log_mel_batch(excerpts), atol=1e-3)
    assert sliced.shape[1:] == (fe.N_MELS, fe.SEGMENT_FRAMES)


def test_mel_filters_cover_the_band() -> None:
    mel = fe.mel_matrix()
    assert mel.shape == (fe.N_FFT // 2 + 1, fe.N_MELS)
    np.testing.assert_allclose(mel.sum(axis=0), 1.0, rtol=1e-5)
    bins_hz = np.arange(mel.shape[0]) * SR / fe.N_FFT
    used = bins_hz[mel.sum(axis=1) > 0]
    assert used.min() >= fe.F_MIN_HZ - SR / fe.N_FFT and used.max() <= fe.F_MAX_HZ


def test_scaled_mel_filters_follow_a_pitch_shift() -> None:
    """A tone s times higher falls in the same band under mel_matrix(s) as the
    original under mel_matrix(): what the pitch views and the training rely on."""
    scale = 2.0 ** (1 / 12)
    t = np.arange(SR) / SR

    def tone(f0: float) -> np.ndarray:  # harmonics up to 3.5 kHz, 1/h amplitudes
        hs = np.arange(1, int(3500 // f0) + 1)
        return np.sum(np.sin(2 * np.pi * f0 * hs[:, None] * t) / hs[:, None], axis=0)

    def profile(x: np.ndarray, s: float = 1.0) -> np.ndarray:
        return np.maximum(fe.log_mel(x.astype(np.float32), s).mean(axis=0), -60.0)

    for f0 in (233.0, 311.0, 415.0):
        original = profile(tone(f0))
        shifted = tone(f0 * scale)
        undone = np.abs(profile(shifted, scale) - original).mean()
        as_is = np.abs(profile(shifted) - original).mean()
        assert undone < 0.5 * as_is
    np.testing.assert_array_equal(fe.mel_matrix(1.0), fe.mel_matrix())
    up = fe.mel_matrix(scale)
    live = up.sum(axis=0) > 0
    np.testing.assert_allclose(up.sum(axis=0)[live], 1.0, rtol=1e-5)
    with pytest.raises(ValueError):
        fe.mel_matrix(3.0)


def test_pitch_view_undoes_a_speed_change(embedder: NeuralEmbedder) -> None:
    """A song played 6 % fast (pitch up a semitone) is closer to its own
    segments when read through the matching pitch view than as it is."""
    own = song(21, 12.0, SR) * 0.5
    catalog = embedder.embed(own, hop_s=0.125)
    fast = np.interp(np.arange(0, own.size - 1, 1.06), np.arange(own.size), own)
    clip = fast[SR : 6 * SR].astype(np.float32)  # starts 1.06 s into the song
    plain = embedder.embed(clip, hop_s=0.5)
    view = embedder.embed(clip, hop_s=0.5, freq_scale=pitch_view_scales([1.0])[0])
    # Query segment j starts at 1.06 (1 + 0.5 j) s in the song (0.125 s catalog grid).
    rows = np.round((1.0 + 0.5 * np.arange(plain.times_s.size)) * 1.06 / 0.125).astype(int)
    sim_plain = np.sum(plain.vectors * catalog.vectors[rows], axis=1)
    sim_view = np.sum(view.vectors * catalog.vectors[rows], axis=1)
    assert sim_view.mean() > sim_plain.mean() + 0.15
