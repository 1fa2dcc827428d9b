"""Fusing landmark and neural proposals."""

from __future__ import annotations

import pytest

from earmark_search.fusion import (
    LANDMARKS,
    NEURAL,
    UNCONFIRMED_MIN,
    FusedMatch,
    from_landmarks,
    fuse,
)
from earmark_search.matching import MatchCandidate


def lm(track: int, offset_s: float, conf: float, scale: float = 1.0) -> FusedMatch:
    return FusedMatch(track, offset_s, 20.0, conf, scale, (LANDMARKS,))


def nn(track: int, offset_s: float, conf: float) -> FusedMatch:
    return FusedMatch(track, offset_s, 0.8, conf, 1.0, (NEURAL,))


def test_agreement_merges_into_one_match_found_by_both() -> None:
    (m,) = fuse([lm(1, 10.0, 0.6, 1.03)], [nn(1, 10.4, 0.7)], max_matches=3)
    assert m.methods == (LANDMARKS, NEURAL)
    assert m.confidence == pytest.approx(1 - 0.4 * 0.3)
    assert m.offset_s == 10.0 and m.frequency_scale == 1.03  # landmark precision kept


def test_same_track_at_another_offset_is_not_agreement() -> None:
    fused = fuse([lm(1, 10.0, 0.6)], [nn(1, 30.0, 0.7)], max_matches=3)
    assert [m.methods for m in fused] == [(NEURAL,)]  # one entry per track, the surer one


def test_each_method_alone_answers_when_the_other_is_silent() -> None:
    assert fuse([], [nn(2, 1.0, 0.8)], 1)[0].methods == (NEURAL,)
    assert fuse([lm(3, 1.0, 0.8)], [], 1)[0].methods == (LANDMARKS,)
    assert fuse([], [], 1) == []


def test_a_weak_landmark_match_needs_the_neural_side_once_it_was_asked() -> None:
    weak, strong = UNCONFIRMED_MIN - 0.05, UNCONFIRMED_MIN
    # Asked and silent, or naming another track: a weak landmark match is dropped.
    assert fuse([lm(1, 5.0, weak)], [], 3, neural_ran=True) == []
    assert [
        m.track_key for m in fuse([lm(1, 5.0, weak)], [nn(2, 7.0, 0.5)], 3, neural_ran=True)
    ] == [2]
    # Confirmed, or strong enough on its own, it stands.
    (confirmed,) = fuse([lm(1, 5.0, weak)], [nn(1, 5.2, 0.5)], 3, neural_ran=True)
    assert confirmed.methods == (LANDMARKS, NEURAL)
    assert fuse([lm(1, 5.0, strong)], [], 3, neural_ran=True)[0].track_key == 1
    # Without a neural search (landmarks only, or no vector store) nothing is dropped.
    assert fuse([lm(1, 5.0, weak)], [], 3)[0].track_key == 1
    # Nor when the neural index holds no vectors of the track (indexed before a
    # model change): its silence says nothing there.
    kept = fuse([lm(1, 5.0, weak), lm(4, 9.0, weak)], [], 3, neural_ran=True, without_vectors={4})
    assert [m.track_key for m in kept] == [4]


def test_disagreement_ranks_by_confidence() -> None:
    fused = fuse([lm(1, 5.0, 0.55)], [nn(2, 7.0, 0.9)], max_matches=2)
    assert [m.track_key for m in fused] == [2, 1]
    assert fuse([lm(1, 5.0, 0.55)], [nn(2, 7.0, 0.9)], max_matches=1)[0].track_key == 2


def test_landmark_frames_become_seconds() -> None:
    (m,) = from_landmarks([MatchCandidate(4, 62, 30, 0.9)], frame_s=1 / 31.25, frequency_scale=0.98)
    assert m.offset_s == pytest.approx(62 / 31.25)
    assert m.frequency_scale == 0.98 and m.methods == (LANDMARKS,)
