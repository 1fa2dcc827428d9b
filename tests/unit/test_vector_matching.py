"""Offset-consistent sequence scoring over neural segment neighbours (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from earmark_search.vector_matching import (
    DEFAULT_CALIBRATION,
    Calibration,
    ExactIndex,
    Hit,
    QueryView,
    decide,
    rank_tracks,
    rank_views,
    score_candidates,
    score_views,
)

DIM = 128
HOP = 0.5


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def catalog() -> tuple[ExactIndex, dict[int, np.ndarray]]:
    rng = np.random.default_rng(0)
    tracks = {key: unit(rng.standard_normal((120, DIM))) for key in (3, 7, 9)}
    vecs = np.concatenate(list(tracks.values()))
    keys = np.concatenate([np.full(120, k) for k in tracks])
    times = np.concatenate([np.arange(120) * HOP for _ in tracks])
    return ExactIndex(vecs, keys, times), tracks


def noisy(x: np.ndarray, level: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return unit(x + level * rng.standard_normal(x.shape) / np.sqrt(DIM))


def test_exact_index_returns_true_top_k(catalog: tuple[ExactIndex, dict[int, np.ndarray]]) -> None:
    index, _ = catalog
    q = unit(np.random.default_rng(1).standard_normal((5, DIM)))
    idx, sims = index.top_k(q, 7)
    brute = np.argsort(-(q @ index.vectors.T), axis=1)[:, :7]
    np.testing.assert_array_equal(idx, brute)
    assert np.all(np.diff(sims, axis=1) <= 0)


def test_picks_the_right_track_and_offset(
    catalog: tuple[ExactIndex, dict[int, np.ndarray]],
) -> None:
    index, tracks = catalog
    # A 10-segment clip starting 20 s (segment 40) into track 7, degraded.
    q = noisy(tracks[7][40:50], level=0.8, seed=2)
    times = np.arange(10) * HOP
    matches = rank_tracks(times, q, index.search, k=10, catalog_hop_s=HOP)
    assert len(matches) == 1
    m = matches[0]
    assert m.track_key == 7
    assert m.offset_s == pytest.approx(20.0, abs=0.01)
    assert m.aligned == 10 and m.segments == 10
    assert m.confidence >= DEFAULT_CALIBRATION.min_confidence


def test_no_match_on_noise(catalog: tuple[ExactIndex, dict[int, np.ndarray]]) -> None:
    index, _ = catalog
    for seed in range(5):
        q = unit(np.random.default_rng(100 + seed).standard_normal((8, DIM)))
        assert rank_tracks(np.arange(8) * HOP, q, index.search) == []


def test_consistent_alignment_beats_scattered_strong_hits() -> None:
    # Track 1: every query segment agrees on start 10 s with 0.6 similarity.
    # Track 2: higher similarities (0.9) but each at a different start.
    hits: list[list[Hit]] = []
    for j in range(6):
        hits.append([(2, 100.0 + 7 * j, 0.9), (1, 10.0 + HOP * j, 0.6), (5, 3.0, 0.2)])
    cands = score_candidates(np.arange(6) * HOP, hits, catalog_hop_s=HOP)
    assert cands[0].track_key == 1
    assert cands[0].offset_s == pytest.approx(10.0)
    assert cands[0].aligned == 6
    assert cands[0].score > cands[1].score


def test_alignment_tolerates_catalog_grid_error() -> None:
    # Dense query hop against a 0.5 s catalog grid: implied starts spread over +-0.25 s.
    qt = np.arange(8) * 0.125
    true_start = 30.1
    hits = [[(4, round((true_start + t) / HOP) * HOP, 0.7)] for t in qt]
    (best,) = score_candidates(qt, hits, catalog_hop_s=HOP)
    assert best.aligned == 8
    assert abs(best.offset_s - true_start) <= 0.25


def test_ambiguous_tracks_lower_the_confidence() -> None:
    qt = np.arange(4) * HOP
    one = [[(1, 5.0 + t, 0.8), (2, 50.0, 0.1)] for t in qt]
    two = [[(1, 5.0 + t, 0.8), (2, 40.0 + t, 0.8)] for t in qt]
    cal = Calibration(bias=-8.0, w_score=8.0, w_margin=10.0, w_log_n=0.5, min_confidence=0.0)
    clear = decide(score_candidates(qt, one, catalog_hop_s=HOP), 0.1, cal)[0]
    tied = decide(score_candidates(qt, two, catalog_hop_s=HOP), 0.1, cal)[0]
    assert tied.margin == pytest.approx(0.0)
    assert clear.confidence > tied.confidence


def test_empty_and_mismatched_inputs(catalog: tuple[ExactIndex, dict[int, np.ndarray]]) -> None:
    index, _ = catalog
    assert rank_tracks(np.zeros(0), np.zeros((0, DIM), np.float32), index.search) == []
    assert score_candidates(np.arange(2.0), [[], []]) == []
    with pytest.raises(ValueError):
        rank_tracks(np.arange(3.0), np.zeros((2, DIM), np.float32), index.search)


def test_speed_changed_clip_stays_aligned() -> None:
    # 10 s clip played 4 % fast: query time t is track time 50 + 1.04 t.
    qt = np.arange(0, 9.0, 0.125)
    hits = [[(6, round((50.0 + 1.04 * t) / 0.25) * 0.25, 0.7), (8, 20.0 + t, 0.5)] for t in qt]
    best = score_candidates(qt, hits, catalog_hop_s=0.25)[0]
    assert best.track_key == 6
    assert best.speed == pytest.approx(1.04)
    assert best.aligned == qt.size
    assert best.offset_s == pytest.approx(50.0, abs=0.13)
    # Held to speed 1.0 the same hits drift out of the window.
    plain = score_candidates(qt, hits, catalog_hop_s=0.25, speeds=(1.0,))[0]
    assert plain.aligned < qt.size


def reference_scores(
    qt: np.ndarray, hits: list[list[Hit]], hop: float, speeds: tuple[float, ...]
) -> dict[int, tuple[float, float, float, int]]:
    """The scoring rule in plain loops: per track, (score, start, speed, aligned)."""
    n = len(qt)
    floor = [min((h[2] for h in hs), default=0.0) for hs in hits]
    tol = hop / 2 + 1e-6
    out: dict[int, tuple[float, float, float, int]] = {}
    for key in sorted({h[0] for hs in hits for h in hs}):
        best = (-1.0, 0.0, 1.0, 0)
        for speed in sorted(speeds, key=lambda r: (abs(r - 1.0), r)):
            rows = [
                (j, t - speed * qt[j], s - floor[j])
                for j, hs in enumerate(hits)
                for k, t, s in hs
                if k == key
            ]
            for centre in sorted({round(off, 3) for _, off, _ in rows}):
                near = [(j, off, g) for j, off, g in rows if abs(off - centre) <= tol]
                per_seg = [
                    max((g for j, _, g in near if j == seg), default=0.0) for seg in range(n)
                ]
                total = sum(per_seg)
                if total > best[0] + 1e-12:
                    weight = sum(g for _, _, g in near)
                    start = sum(g * off for _, off, g in near) / weight if weight else centre
                    best = (total, start, speed, sum(1 for g in per_seg if g > 0))
        out[key] = ((sum(floor) + max(best[0], 0.0)) / n, best[1], best[2], best[3])
    return out


@pytest.mark.parametrize("seed", range(40))
def test_scoring_matches_the_rule_spelled_out_in_loops(seed: int) -> None:
    # Similarities are binary fractions, so sums are exact in any order and ties
    # (common here: few distinct values) are broken the same way.
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 14))
    qt = np.arange(n) * float(rng.choice([0.125, 0.375, 0.5]))
    hits: list[list[Hit]] = [
        [
            (
                int(rng.integers(0, 4)),
                float(rng.integers(0, 40)) * 0.25,
                float(rng.choice([0.5, 0.625, 0.75, 0.875])),
            )
            for _ in range(int(rng.integers(0, 7)))
        ]
        for _ in range(n)
    ]
    speeds = (1.0, 0.97, 1.03, 1.06)
    got = score_candidates(qt, hits, catalog_hop_s=0.25, speeds=speeds)
    want = reference_scores(qt, hits, 0.25, speeds)
    assert [c.track_key for c in got] == sorted(want, key=lambda k: -want[k][0])
    for c in got:
        score, start, speed, aligned = want[c.track_key]
        assert (c.score, c.speed, c.aligned) == (pytest.approx(score), speed, aligned)
        assert c.offset_s == pytest.approx(start)


def test_pitch_views_search_once_and_keep_the_view_that_aligns(
    catalog: tuple[ExactIndex, dict[int, np.ndarray]],
) -> None:
    """Only one view of the clip resembles the catalog (as a pitch-shifted clip's
    right view would): its track wins, tagged with that view's scale, after one
    search call for all views."""
    index, tracks = catalog
    rng = np.random.default_rng(4)
    times = np.arange(8) * HOP
    wrong = [QueryView(s, times, unit(rng.standard_normal((8, DIM)))) for s in (1.0, 0.97)]
    right = QueryView(1.03, times, noisy(tracks[9][60:68], level=0.8, seed=5))
    calls: list[int] = []

    def search(vectors: np.ndarray, k: int) -> list[list[Hit]]:
        calls.append(len(vectors))
        return index.search(vectors, k)

    candidates, floor = score_views([*wrong, right], search, k=10, catalog_hop_s=HOP)
    assert calls == [24]
    assert [c.track_key for c in candidates].count(9) == 1  # one candidate per track
    best = candidates[0]
    assert (best.track_key, best.frequency_scale) == (9, 1.03)
    assert abs(best.offset_s - 30.0) < HOP / 2
    assert 0.0 < floor < best.score
    loose = Calibration(-10.0, 10.0, 10.0, 0.0, min_confidence=0.5)
    (match,) = rank_views([*wrong, right], index.search, k=10, catalog_hop_s=HOP,
                          calibration=loose)  # fmt: skip
    assert (match.track_key, match.frequency_scale) == (9, 1.03)
    # Hits of the first view already searched are reused, not searched again.
    calls.clear()
    plain_hits = index.search(wrong[0].vectors, 10)
    again, _ = score_views([*wrong, right], search, k=10, catalog_hop_s=HOP, searched=plain_hits)
    assert calls == [16]
    assert [(c.track_key, c.frequency_scale) for c in again] == [
        (c.track_key, c.frequency_scale) for c in candidates
    ]
    assert [c.score for c in again] == pytest.approx([c.score for c in candidates], abs=1e-6)
    with pytest.raises(ValueError):
        score_views([right], search, k=10, searched=plain_hits[:3])
    # Views of noise alone match nothing under the shipped calibration.
    assert rank_views(wrong, index.search, k=10, catalog_hop_s=HOP) == []
    assert score_views([QueryView(1.0, np.zeros(0), np.zeros((0, DIM), np.float32))],
                       search, k=10) == ([], 0.0)  # fmt: skip
