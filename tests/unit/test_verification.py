"""Peak verification: a weak vote's best candidate checked peak by peak."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from earmark.v1 import common_pb2, search_pb2
from earmark_fingerprint.landmarks import (
    SAMPLE_RATE_HZ,
    extract_landmarks,
    extract_query_landmarks,
    extract_rescaled_query_landmarks,
)
from earmark_search.catalog import Postings, TrackRow
from earmark_search.identify import (
    VERIFIED_MIN_CONFIDENCE,
    VERIFY_PEAK_RATIO,
    ScaledQuery,
    identify,
)
from earmark_search.verification import PEAK_BIN_BITS, check_alignment, pack_peaks
from tests.unit.test_landmarks import synth_music, with_noise

FRAME_RATE_HZ = 31.25


def test_pack_peaks_sorts_by_frame_then_bin() -> None:
    keys = pack_peaks([3, 1, 1], [40, 90, 30])
    assert keys.dtype == np.uint32
    assert (keys >> PEAK_BIN_BITS).tolist() == [1, 1, 3]
    assert (keys & ((1 << PEAK_BIN_BITS) - 1)).tolist() == [30, 90, 40]


@pytest.mark.parametrize(
    ("frames", "bins"), [([1, 2], [3]), ([1], [1 << PEAK_BIN_BITS]), ([-1], [3])]
)
def test_pack_peaks_refuses_bad_input(frames: list[int], bins: list[int]) -> None:
    with pytest.raises(ValueError, match="peak"):
        pack_peaks(frames, bins)


def _track_and_clip(noise_snr_db: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    track = synth_music(7, 40.0)
    start_s = 12
    clip = track[start_s * SAMPLE_RATE_HZ : (start_s + 5) * SAMPLE_RATE_HZ]
    if noise_snr_db is not None:
        clip = with_noise(clip, noise_snr_db, seed=3)
    ref = extract_landmarks(track)
    q = extract_query_landmarks(clip)
    offset = round(start_s * FRAME_RATE_HZ)
    return pack_peaks(ref.peak_times, ref.peak_bins), q.peak_times, q.peak_bins, offset


@pytest.mark.parametrize("snr_db", [None, 0.0])
def test_the_true_alignment_stands_far_above_chance(snr_db: float | None) -> None:
    reference, frames, bins, offset = _track_and_clip(snr_db)
    check = check_alignment(frames, bins, reference, offset)
    assert check.passes(VERIFY_PEAK_RATIO), check
    # Elsewhere in the same track, the clip's peaks line up only by chance.
    assert not check_alignment(frames, bins, reference, offset + 200).passes(VERIFY_PEAK_RATIO)


def test_another_track_does_not_pass() -> None:
    _, frames, bins, offset = _track_and_clip(None)
    other = extract_landmarks(synth_music(8, 40.0))
    check = check_alignment(frames, bins, pack_peaks(other.peak_times, other.peak_bins), offset)
    assert not check.passes(VERIFY_PEAK_RATIO), check


def test_a_peak_counts_within_one_frame_and_one_bin_only() -> None:
    reference = pack_peaks([100], [50])
    for frame, bin_, hit in [(100, 50, 1), (101, 49, 1), (99, 51, 1), (102, 50, 0), (100, 52, 0)]:
        assert check_alignment([frame], [bin_], reference, 0).hits == hit, (frame, bin_)


def test_an_empty_side_gives_no_evidence() -> None:
    assert check_alignment([], [], pack_peaks([1], [2]), 0).hits == 0
    assert check_alignment([1], [2], np.zeros(0, np.uint32), 0).hits == 0


class PeakCatalog:
    """Track 1 aligns 9 query landmarks at offset 100, track 2 aligns 4: too few
    votes for the vote alone (10), enough to check peaks. Track 1's peaks are `peaks`."""

    def __init__(self, peaks: np.ndarray) -> None:
        self.peaks = peaks
        first, second = np.arange(9), np.arange(9, 13)
        hashes = np.concatenate([first, second]).astype("<u4")
        tracks = np.concatenate([np.full(9, 1), np.full(4, 2)]).astype(np.int64)
        times = np.concatenate([first * 3 + 100, second * 3 + 50]).astype(np.int64)
        self._postings: Postings = (hashes, tracks, times)
        self.peaks_read: list[int] = []

    async def rarest_postings(
        self, hashes: np.ndarray, max_postings: int, *, parts: int = 1
    ) -> tuple[Postings, int]:
        return self._postings, 0

    async def track_peaks(self, track_key: int) -> np.ndarray:
        self.peaks_read.append(track_key)
        return self.peaks if track_key == 1 else np.zeros(0, np.uint32)

    async def tracks_by_key(self, keys: list[int]) -> dict[int, TrackRow]:
        return {
            k: TrackRow(k, f"track-{k}", "", "", "", "", "", {}, 60.0, "", "wav", 0, 0.0, [])
            for k in keys
        }


def _weak_vote_clip(
    peak_frames: np.ndarray, peak_bins: np.ndarray
) -> common_pb2.LandmarkFingerprint:
    n = 13  # query landmark i: hash i at frame 3 i
    return common_pb2.LandmarkFingerprint(
        hashes=np.arange(n, dtype="<u4").tobytes(),
        times=(np.arange(n) * 3).astype("<u4").tobytes(),
        frame_rate_hz=FRAME_RATE_HZ,
        duration_s=2.0,
        peak_times=peak_frames.astype("<u4").tobytes(),
        peak_bins=peak_bins.astype("<u4").tobytes(),
    )


def _clip_peaks(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.sort(rng.integers(0, 60, 80)), rng.integers(26, 461, 80)


@pytest.mark.parametrize("same_peaks", [True, False])
def test_identify_accepts_a_weak_vote_only_when_the_peaks_confirm_it(same_peaks: bool) -> None:
    frames, bins = _clip_peaks(1)
    # Track 1's peaks: the clip's own at offset 100 (or unrelated ones), plus
    # unrelated peaks over a 40 s track.
    own = (frames + 100, bins) if same_peaks else _clip_peaks(2)
    filler_frames, filler_bins = np.arange(0, 1250, 4), np.full(313, 300)
    fake = PeakCatalog(
        pack_peaks(np.concatenate([own[0], filler_frames]), np.concatenate([own[1], filler_bins]))
    )
    response = asyncio.run(
        identify(
            fake,  # type: ignore[arg-type]
            _weak_vote_clip(frames, bins),
            1,
            method=search_pb2.IDENTIFY_METHOD_LANDMARKS,
        )
    )
    assert fake.peaks_read == [1]
    if same_peaks:
        assert [m.track.track_id for m in response.matches] == ["track-1"]
        assert response.matches[0].confidence >= VERIFIED_MIN_CONFIDENCE
        assert response.matches[0].offset_s == pytest.approx(100 / FRAME_RATE_HZ)
    else:
        assert not response.matches


def test_identify_does_not_verify_without_clip_peaks() -> None:
    fake = PeakCatalog(pack_peaks([100], [50]))
    clip = _weak_vote_clip(np.zeros(0), np.zeros(0))
    response = asyncio.run(
        identify(fake, clip, 1, method=search_pb2.IDENTIFY_METHOD_LANDMARKS)  # type: ignore[arg-type]
    )
    assert fake.peaks_read == []
    assert not response.matches


def _scaled(scale: float, step: int, frames: np.ndarray, bins: np.ndarray) -> ScaledQuery:
    n = 13  # landmark i: hash i at frame step * i (the catalog's are at 3 i + offset)
    return ScaledQuery(
        frequency_scale=scale,
        hashes=np.arange(n, dtype="<u4"),
        times=(np.arange(n) * step).astype("<u4"),
        peak_times=frames.astype("<u4"),
        peak_bins=bins.astype("<u4"),
    )


@pytest.mark.parametrize("same_peaks", [True, False])
def test_the_rescue_verifies_one_candidate_at_its_own_scale(same_peaks: bool) -> None:
    frames, bins = _clip_peaks(1)
    own = (frames + 100, bins) if same_peaks else _clip_peaks(2)
    fake = PeakCatalog(pack_peaks(*own))
    # The plain clip matches nothing (its hashes are not in the catalog) but has
    # enough landmarks for the rescue.
    plain = common_pb2.LandmarkFingerprint(
        hashes=np.arange(1000, 1100, dtype="<u4").tobytes(),
        times=np.arange(100, dtype="<u4").tobytes(),
        frame_rate_hz=FRAME_RATE_HZ,
        duration_s=3.0,
    )
    # At 0.97 nothing aligns; at 1.03 and 1.05 the same 9 votes for track 1
    # (4 for track 2): one verification, at the first of the two.
    views = [
        _scaled(0.97, 7, frames, bins),
        _scaled(1.03, 3, frames, bins),
        _scaled(1.05, 3, frames, bins),
    ]

    async def rescaled() -> list[ScaledQuery]:
        return views

    response = asyncio.run(
        identify(
            fake,  # type: ignore[arg-type]
            plain,
            1,
            rescaled=rescaled,
            method=search_pb2.IDENTIFY_METHOD_LANDMARKS,
        )
    )
    assert fake.peaks_read == [1]  # one verification, not one per scale
    if same_peaks:
        assert [m.track.track_id for m in response.matches] == ["track-1"]
        assert response.matches[0].frequency_scale == pytest.approx(1.03)
        assert response.matches[0].confidence < VERIFIED_MIN_CONFIDENCE  # the vote's own
    else:
        assert not response.matches


def test_rescaled_landmarks_carry_the_clips_peaks_rescaled() -> None:
    clip = synth_music(9, 4.0)
    plain = extract_landmarks(clip)
    unscaled, faster = extract_rescaled_query_landmarks(clip, scales=(1.0, 1.06))
    assert np.array_equal(unscaled.peak_times, plain.peak_times)
    # Sub-bin frequencies, rounded: within one bin of the integer peak bins.
    assert np.abs(unscaled.peak_bins.astype(int) - plain.peak_bins.astype(int)).max() <= 1
    expected = plain.peak_bins / 1.06
    assert np.abs(faster.peak_bins - expected).max() <= 1.0
