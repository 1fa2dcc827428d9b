"""Offset-consistency voting on hand-built postings."""

from __future__ import annotations

import numpy as np
import pytest

from earmark_search.matching import MatchCandidate, match_confidence, rank_matches


def query(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n distinct hashes at increasing frame times."""
    rng = np.random.default_rng(seed)
    hashes = rng.choice(1 << 23, size=n, replace=False).astype(np.uint32)
    times = np.sort(rng.integers(0, 150, n)).astype(np.uint32)
    return hashes, times


def postings(
    qh: np.ndarray, qt: np.ndarray, track: int, offset: int, which: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Catalog rows of `track` agreeing with query landmarks `which` at `offset`."""
    h = qh[which].astype(np.int64)
    t = qt[which].astype(np.int64) + offset
    return h, np.full(h.size, track, np.int64), t


def cat(*parts: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    return tuple(np.concatenate(cols) for cols in zip(*parts, strict=True))


def random_rows(
    qh: np.ndarray, n: int, tracks: tuple[int, int], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chance collisions: query hashes at random tracks and times."""
    rng = np.random.default_rng(seed)
    return (
        rng.choice(qh, n).astype(np.int64),
        rng.integers(tracks[0], tracks[1], n),
        rng.integers(0, 9000, n),
    )


def test_finds_track_offset_and_score() -> None:
    qh, qt = query(100)
    p = cat(postings(qh, qt, 7, 1234, np.arange(30)), random_rows(qh, 200, (1, 50), seed=1))
    [m] = rank_matches(qh, qt, *p)
    assert m == MatchCandidate(7, 1234, 30, m.confidence, m.runner_up)
    # The confidence is the one of the score against the runner-up it reports.
    assert m.confidence == match_confidence(m.score, m.runner_up)
    assert 0.9 < m.confidence <= 1.0


def test_one_frame_jitter_is_pooled() -> None:
    qh, qt = query(100)
    p = cat(
        postings(qh, qt, 7, 500, np.arange(0, 40, 2)),  # 20 at 500
        postings(qh, qt, 7, 501, np.arange(1, 40, 2)),  # 20 at 501
        postings(qh, qt, 7, 503, np.arange(40, 45)),  # 2 frames away: separate
    )
    [m] = rank_matches(qh, qt, *p)
    assert m.score == 40 and m.offset_frames in (500, 501)


def test_each_query_landmark_counts_once() -> None:
    qh, qt = query(50)
    base = postings(qh, qt, 7, 100, np.arange(12))
    # The same rows twice (e.g. duplicated index rows) and the same hashes one
    # frame later in the track (a sustained sound) must not add votes.
    shifted = postings(qh, qt, 7, 101, np.arange(12))
    [m] = rank_matches(qh, qt, *cat(base, base, shifted))
    assert m.score == 12


def test_min_aligned_is_respected() -> None:
    qh, qt = query(50)
    p = postings(qh, qt, 3, 40, np.arange(9))
    assert rank_matches(qh, qt, *p, min_aligned=10) == []
    [m] = rank_matches(qh, qt, *p, min_aligned=9)
    assert m.track_key == 3 and m.score == 9


def test_runner_up_ratio_is_respected() -> None:
    qh, qt = query(100)
    p = cat(
        postings(qh, qt, 1, 10, np.arange(0, 30)),  # 30 votes
        postings(qh, qt, 2, 70, np.arange(30, 50)),  # 20 votes
    )
    assert rank_matches(qh, qt, *p, min_ratio=2.0) == []
    [m] = rank_matches(qh, qt, *p, min_ratio=1.4)
    assert (m.track_key, m.score) == (1, 30)
    # A clear winner passes the default ratio.
    p = cat(postings(qh, qt, 1, 10, np.arange(0, 45)), postings(qh, qt, 2, 70, np.arange(45, 55)))
    [m] = rank_matches(qh, qt, *p)
    assert (m.track_key, m.offset_frames, m.score) == (1, 10, 45)


def test_max_matches_returns_separated_candidates_in_order() -> None:
    qh, qt = query(200)
    p = cat(
        postings(qh, qt, 5, 10, np.arange(0, 60)),
        postings(qh, qt, 6, 20, np.arange(60, 90)),
        random_rows(qh, 100, (100, 200), seed=3),
    )
    matches = rank_matches(qh, qt, *p, max_matches=3)
    assert [(m.track_key, m.offset_frames, m.score) for m in matches] == [(5, 10, 60), (6, 20, 30)]
    # Each is judged against the best track ranked below it.
    assert matches[0].confidence == pytest.approx(match_confidence(60, 30))
    assert matches[1].confidence > 0.9


def test_single_track_is_judged_against_random_background() -> None:
    qh, qt = query(400)
    rng = np.random.default_rng(4)
    # Many chance hits spread over one track's offsets: a background of ~15 per
    # +-1 window, so 12 aligned votes are noise and 80 are a match.
    noise = (rng.choice(qh, 3000).astype(np.int64), np.full(3000, 9), rng.integers(0, 600, 3000))
    assert rank_matches(qh, qt, *cat(noise, postings(qh, qt, 9, 300, np.arange(12)))) == []
    [m] = rank_matches(qh, qt, *cat(noise, postings(qh, qt, 9, 300, np.arange(80))))
    assert m.track_key == 9 and abs(m.offset_frames - 300) <= 1


def test_negative_offsets_large_keys_and_db_dtypes() -> None:
    qh, qt = query(60)
    qt = qt + np.uint32(500)
    track = (1 << 40) + 17
    h, k, t = postings(qh, qt, track, -300, np.arange(25))
    other = random_rows(qh, 50, (1, 3), seed=5)
    h, k, t = cat((h, k, t), other)
    [m] = rank_matches(qh, qt, h.astype(np.int32), k, t.astype(np.int32))
    assert (m.track_key, m.offset_frames, m.score) == (track, -300, 25)


def test_sparse_track_keys_spanning_int64() -> None:
    qh, qt = query(60)
    p = cat(
        postings(qh, qt, -(1 << 62), 5, np.arange(30)),
        postings(qh, qt, (1 << 62), 9, np.arange(30, 35)),
    )
    [m] = rank_matches(qh, qt, *p)
    assert (m.track_key, m.offset_frames, m.score) == (-(1 << 62), 5, 30)


def test_empty_inputs_give_no_match() -> None:
    qh, qt = query(10)
    empty = np.zeros(0, np.int64)
    assert rank_matches(qh, qt, empty, empty, empty) == []
    assert rank_matches(empty, empty, qh, np.ones(10, np.int64), qt) == []
    # Postings whose hashes are not in the query never join.
    assert rank_matches(qh, qt, qh.astype(np.int64) + (1 << 24), np.ones(10, np.int64), qt) == []


def test_invalid_inputs_are_rejected() -> None:
    qh, qt = query(10)
    ones = np.ones(10, np.int64)
    with pytest.raises(ValueError, match="length"):
        rank_matches(qh, qt[:5], qh, ones, qt)
    with pytest.raises(ValueError, match="length"):
        rank_matches(qh, qt, qh, ones[:3], qt)
    with pytest.raises(ValueError, match="integers"):
        rank_matches(qh.astype(float), qt, qh, ones, qt)
    with pytest.raises(ValueError, match="max_matches"):
        rank_matches(qh, qt, qh, ones, qt, max_matches=0)


def test_deterministic_under_posting_order() -> None:
    qh, qt = query(300)
    p = cat(
        postings(qh, qt, 1, 100, np.arange(40)),
        postings(qh, qt, 2, 100, np.arange(40, 55)),
        random_rows(qh, 2000, (1, 40), seed=6),
    )
    order = np.random.default_rng(7).permutation(p[0].size)
    a = rank_matches(qh, qt, *p, max_matches=3, min_ratio=1.0, min_aligned=1)
    b = rank_matches(
        qh, qt, *(col[order] for col in p), max_matches=3, min_ratio=1.0, min_aligned=1
    )
    assert a == b and len(a) == 3


def test_postings_already_in_hash_order_are_joined_as_they_are() -> None:
    """The rescue sorts its rows by hash once and votes every scale on them;
    extra rows of hashes the query does not hold must change nothing."""
    qh, qt = query(300)
    other_hashes = (qh.astype(np.int64) + (1 << 23)).astype(np.uint32)
    p = cat(
        postings(qh, qt, 1, 100, np.arange(40)),
        postings(qh, qt, 2, 100, np.arange(40, 55)),
        random_rows(qh, 2000, (1, 40), seed=6),
        random_rows(other_hashes, 3000, (1, 40), seed=8),
    )
    order = np.argsort(p[0], kind="stable")
    by_hash = tuple(col[order] for col in p)
    loose = {"max_matches": 3, "min_ratio": 1.0, "min_aligned": 1}
    expected = rank_matches(qh, qt, *p, **loose)
    joined = rank_matches(qh, qt, *by_hash, postings_sorted=True, **loose)
    assert joined == expected and len(joined) == 3


def test_confidence_is_monotone_and_bounded() -> None:
    scores = np.arange(1, 200)
    for background in (1.0, 3.0, 10.0):
        c = np.array([match_confidence(float(s), background) for s in scores])
        assert np.all(np.diff(c) >= 0) and c.min() >= 0 and c.max() <= 1
    assert match_confidence(20, 2) > match_confidence(20, 5) > match_confidence(20, 10)
    assert match_confidence(0, 1) == 0.0
    assert match_confidence(5, 4) < 0.1  # barely above chance: low


def test_finds_the_match_among_100k_distractor_postings() -> None:
    # Speed is measured in bench/landmark_speed.py, not asserted here.
    qh, qt = query(2000)
    p = cat(postings(qh, qt, 42, 777, np.arange(300)), random_rows(qh, 100_000, (0, 5000), 8))
    [m] = rank_matches(qh, qt, *p)
    assert (m.track_key, m.offset_frames) == (42, 777)
