"""essentia descriptors on generated audio with a known tempo and key; the similarity vector."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("essentia")

from earmark.v1 import features_pb2
from earmark_features import descriptors, similarity, testsignals
from earmark_features.index import BadFilter, filter_expression

SECONDS = 20.0


def _bpm_ok(f: features_pb2.TrackFeatures, bpm: float) -> bool:
    if abs(f.rhythm.bpm - bpm) / bpm <= 0.02:
        return True
    return f.rhythm.octave_ambiguous and abs(f.rhythm.bpm_alternative - bpm) / bpm <= 0.02


@pytest.mark.parametrize("bpm", [92.0, 120.0, 143.0])
def test_bpm_of_drum_loops_within_two_percent(bpm: float) -> None:
    f = descriptors.describe(testsignals.drum_loop(bpm, SECONDS, seed=int(bpm)))
    assert abs(f.rhythm.bpm - bpm) / bpm <= 0.02, f.rhythm
    assert f.rhythm.bpm_confidence > 1.5
    assert f.rhythm.onset_rate_hz > 0


def test_fast_loop_is_right_or_flagged_as_octave_error() -> None:
    f = descriptors.describe(testsignals.drum_loop(174.0, SECONDS, seed=3))
    assert _bpm_ok(f, 174.0), f.rhythm


@pytest.mark.parametrize(
    ("tonic", "scale"), [("C", "major"), ("A", "minor"), ("F#", "major"), ("Eb", "minor")]
)
def test_key_of_chord_progressions(tonic: str, scale: str) -> None:
    f = descriptors.describe(testsignals.chord_progression(tonic, scale, SECONDS, seed=7))
    assert (f.tonality.key, f.tonality.scale) == (tonic, scale)
    assert f.tonality.profile == descriptors.KEY_PROFILE
    assert 0.5 < f.tonality.strength <= 1.0
    # The chroma (bin 0 = C) peaks on a note of the scale.
    steps = testsignals.MAJOR if scale == "major" else testsignals.MINOR_HARMONIC
    tonic_pc = descriptors.NOTE_NAMES.index(tonic)
    assert int(np.argmax(f.tonality.hpcp_mean)) in {(tonic_pc + s) % 12 for s in steps}


def test_schema_fields_are_filled() -> None:
    x = testsignals.drum_loop(110.0, 10.0, seed=1) + testsignals.chord_progression(
        "G", "major", 10.0
    )
    f = descriptors.describe(x, "t-1")
    assert f.track_id == "t-1"
    assert f.schema_version == descriptors.SCHEMA_VERSION
    assert f.extractor_version == descriptors.EXTRACTOR_VERSION
    assert f.duration_s == pytest.approx(10.0, abs=0.01)
    assert -40 < f.loudness.integrated_lufs < 0
    assert f.loudness.range_lu >= 0
    assert -40 < f.loudness_dbfs < 0
    assert 0 < f.rhythm.danceability < 4
    assert f.rhythm.dynamic_complexity >= 0
    s = f.spectral
    assert 100 < s.centroid_hz.mean < 8000 and s.centroid_hz.mean == f.spectral_centroid_hz
    assert 0 < s.rolloff_hz.mean < 22050
    assert 0 <= s.flatness.mean <= 1
    assert len(s.mfcc_mean) == len(s.mfcc_stdev) == descriptors.MFCC_COEFFS
    assert len(f.tonality.hpcp_mean) == 12
    assert max(f.tonality.hpcp_mean) <= 1.0


def test_silence_does_not_crash() -> None:
    f = descriptors.describe(np.zeros(descriptors.SAMPLE_RATE_HZ * 4, dtype=np.float32))
    assert f.duration_s == pytest.approx(4.0)
    assert np.isfinite(similarity.vector(f)).all()


@pytest.mark.parametrize(
    ("raw", "key"), [("a#", "Bb"), ("Db", "C#"), ("f#", "F#"), ("E", "E"), ("", "")]
)
def test_normalise_key(raw: str, key: str) -> None:
    assert descriptors.normalise_key(raw) == key


def test_normalise_key_refuses_non_notes() -> None:
    with pytest.raises(ValueError, match="not a key"):
        descriptors.normalise_key('C" or 1')


def test_vector_is_unit_length_and_groups_explain() -> None:
    a = descriptors.describe(testsignals.drum_loop(120.0, 10.0, seed=1))
    b = descriptors.describe(testsignals.drum_loop(121.0, 10.0, seed=2))
    c = descriptors.describe(testsignals.chord_progression("D", "minor", 10.0))
    va, vb, vc = (similarity.vector(f) for f in (a, b, c))
    assert va.shape == (similarity.DIM,)
    assert float(np.linalg.norm(va)) == pytest.approx(1.0, abs=1e-5)
    # Two drum loops are closer to each other than to a chord progression.
    assert va @ vb > va @ vc
    from earmark_features.index import neighbour_of

    reasons = similarity.explain(va, neighbour_of(a), vb, neighbour_of(b))
    assert reasons and reasons[0].similarity >= reasons[-1].similarity
    assert {r.feature for r in reasons} <= {*similarity.GROUP_DIMS, "key"}


def test_filter_expression() -> None:
    flt = features_pb2.SimilarFilter(min_bpm=90, max_bpm=130, key="a#", scale="Minor")
    expr = filter_expression(flt, exclude="0b0c9a1e-0000-4000-8000-000000000001")
    assert expr == (
        'track_id != "0b0c9a1e-0000-4000-8000-000000000001" and bpm >= 90.0 and bpm <= 130.0 '
        'and key == "Bb" and scale == "minor"'
    )
    assert filter_expression(None) == ""
    for bad in (
        features_pb2.SimilarFilter(min_bpm=140, max_bpm=100),
        features_pb2.SimilarFilter(key='A" or key != "'),
        features_pb2.SimilarFilter(scale="dorian"),
    ):
        with pytest.raises(BadFilter):
            filter_expression(bad)
