"""Clips played faster/slower or pitch-shifted: rescaled query landmarks and the
rescue that picks the scale whose landmarks align."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from earmark_fingerprint.landmarks import (
    HOP,
    RESCALE_FACTORS,
    SAMPLE_RATE_HZ,
    extract_landmarks,
    extract_query_landmarks,
    extract_rescaled_query_landmarks,
    rescue_shifts,
)
from earmark_search.identify import (
    RESCUE_MIN_ALIGNED,
    RESCUE_MIN_RATIO,
    VERIFY_MIN_ALIGNED,
    VERIFY_MIN_RATIO,
    ScaledQuery,
    vote_rescue,
)
from earmark_search.matching import rank_matches
from earmark_search.scanning import MIN_DISTINCT_TIMES, aligned_times
from tests.unit.test_landmarks import TRACK_KEY_BASE, catalog, synth_music

SR = SAMPLE_RATE_HZ


def played_at(x: np.ndarray, speed: float) -> np.ndarray:
    """Resample so that playback is `speed` times faster: frequencies x speed."""
    n = round(x.size / speed)
    out: np.ndarray = signal.resample(x, n).astype(np.float32)
    return out


def postings_for(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _, cat_hashes, keys, times = catalog()
    rows = np.isin(cat_hashes, hashes)
    return cat_hashes[rows], keys[rows], times[rows]


def scaled_queries(clip: np.ndarray) -> list[ScaledQuery]:
    variants = extract_rescaled_query_landmarks(clip)
    return [
        ScaledQuery(scale, v.hashes, v.times, v.peak_times, v.peak_bins)
        for scale, v in zip(RESCALE_FACTORS, variants, strict=True)
    ]


def rescue(clip: np.ndarray) -> tuple[float, list]:
    queries = scaled_queries(clip)
    postings = postings_for(np.concatenate([q.hashes for q in queries]))
    voted = vote_rescue(queries, postings, max_matches=1)
    return voted.scale, voted.matches


def _sped_clip(speed: float, seconds: float = 6.0) -> tuple[np.ndarray, float]:
    track = catalog()[0][0]
    start = 20 * SR
    original = track[start : start + int(seconds * speed * SR) + SR]
    return played_at(original, speed)[: int(seconds * SR)], start


def test_factors_cover_a_semitone_each_way_in_one_percent_steps() -> None:
    assert 1.0 not in RESCALE_FACTORS
    assert min(RESCALE_FACTORS) < 2 ** (-1 / 12) and max(RESCALE_FACTORS) > 2 ** (1 / 12)
    ratios = np.diff(np.log(sorted((*RESCALE_FACTORS, 1.0))))
    assert np.allclose(ratios, np.log(1.01))


def test_unit_scale_reproduces_most_plain_landmarks() -> None:
    x = synth_music(7, 8.0)
    plain = extract_landmarks(x)
    (same,) = extract_rescaled_query_landmarks(x, scales=(1.0,), shifts=1)
    both = np.intersect1d(
        (plain.hashes.astype(np.uint64) << np.uint64(32)) | plain.times,
        (same.hashes.astype(np.uint64) << np.uint64(32)) | same.times,
    )
    assert both.size >= 0.9 * plain.hashes.size


@pytest.mark.parametrize("speed", [1.03, 0.96])
def test_sped_up_or_slowed_clip_is_found_at_the_right_scale(speed: float) -> None:
    clip, start = _sped_clip(speed)
    plain = extract_query_landmarks(clip)
    plain_matches = rank_matches(plain.hashes, plain.times, *postings_for(plain.hashes))
    scale, matches = rescue(clip)
    assert matches, f"no rescued match (plain: {plain_matches})"
    assert matches[0].track_key == TRACK_KEY_BASE
    assert abs(np.log(scale / speed)) <= np.log(1.01)
    # The offset is where the clip starts in the track, give or take the drift
    # of a clip at another tempo.
    expected = start / HOP
    assert abs(matches[0].offset_frames - expected) <= 0.06 * 6.0 * 31.25
    # The rescue is needed: as it is, the clip keeps few of the track's hashes.
    assert not plain_matches or plain_matches[0].score < matches[0].score


@pytest.mark.parametrize("seed", [910, 911])
def test_rescue_finds_nothing_for_music_outside_the_catalog(seed: int) -> None:
    outsider = synth_music(seed, 8.0)[SR : 7 * SR]
    assert rescue(outsider) == (1.0, [])


@pytest.mark.parametrize("seconds,grids", [(3.0, 2), (4.4, 2), (4.5, 1), (6.0, 1)])
def test_short_clips_are_rescaled_from_two_grids_long_ones_from_one(
    seconds: float, grids: int
) -> None:
    x = synth_music(7, 8.0)[: int(seconds * SR)]
    (default,) = extract_rescaled_query_landmarks(x, scales=(1.02,))
    (chosen,) = extract_rescaled_query_landmarks(x, scales=(1.02,), shifts=grids)
    (other,) = extract_rescaled_query_landmarks(x, scales=(1.02,), shifts=3 - grids)
    assert rescue_shifts(seconds) == grids
    assert np.array_equal(default.hashes, chosen.hashes)
    assert np.array_equal(default.times, chosen.times)
    assert default.hashes.size != other.hashes.size


def test_bad_scales_are_refused() -> None:
    with pytest.raises(ValueError, match="scales"):
        extract_rescaled_query_landmarks(np.zeros(SR, np.float32), scales=(3.0,))


def _reference_rescue(queries: list[ScaledQuery], postings: tuple, max_matches: int) -> tuple:
    """The rescue spelt out: every scale ranked on every row, once per rule."""
    best: tuple[float, list] = (1.0, [])
    to_verify = None
    for q in queries:
        h, t = q.hashes.astype(np.int64), q.times.astype(np.int64)
        strict = rank_matches(
            h, t, *postings, max_matches=max_matches,
            min_aligned=RESCUE_MIN_ALIGNED, min_ratio=RESCUE_MIN_RATIO,
        )  # fmt: skip
        strict = [
            m for m in strict
            if aligned_times(h, t, postings, m.track_key, m.offset_frames).size
            >= MIN_DISTINCT_TIMES
        ]  # fmt: skip
        if strict and (not best[1] or strict[0].score > best[1][0].score):
            best = (q.frequency_scale, strict)
        loose = rank_matches(
            h, t, *postings, max_matches=max_matches,
            min_aligned=VERIFY_MIN_ALIGNED, min_ratio=VERIFY_MIN_RATIO,
        )  # fmt: skip
        if loose and (to_verify is None or loose[0].score > to_verify[1].score):
            to_verify = (q.frequency_scale, loose[0])
    return best, (None if best[1] else to_verify)


@pytest.mark.parametrize(
    ("speed", "seconds", "max_matches", "outcome"),
    [
        (1.03, 6.0, 1, "match"),
        (0.96, 6.0, 3, "match"),
        (1.03, 1.0, 1, "verify"),  # 1 s: too few votes for the rescue, enough to verify
        (0.97, 1.0, 2, "verify"),
        (1.15, 6.0, 1, "nothing"),  # beyond the rescue's scales
    ],
)
def test_one_vote_per_scale_decides_as_ranking_each_rule_on_every_row(
    speed: float, seconds: float, max_matches: int, outcome: str
) -> None:
    clip, _ = _sped_clip(speed, seconds)
    queries = scaled_queries(clip)
    postings = postings_for(np.concatenate([q.hashes for q in queries]))
    voted = vote_rescue(queries, postings, max_matches)
    (scale, matches), to_verify = _reference_rescue(queries, postings, max_matches)
    assert outcome == ("match" if matches else "verify" if to_verify else "nothing")
    assert (voted.scale, voted.matches) == (scale, matches)
    got = None if voted.candidate is None else (
        voted.candidate[0].frequency_scale, voted.candidate[1]
    )  # fmt: skip
    assert got == to_verify
