"""Fuzzing the ingest validators: tag reading and merging (tags.py), and the
audio checks an upload passes in order (validation.py, music_check.py). They
answer with tags or a Refusal; they never raise, and what they keep is bounded
(it ends up in the database and in every event about the submission)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from earmark.v1 import common_pb2
from earmark_ingest.tags import MAX_EXTRA_KEYS, MAX_VALUE_CHARS, TrackTags, merge, read_tags
from earmark_ingest.validation import Refusal, check_audio, check_content, check_tags
from earmark_runtime.audio import DecodedAudio
from tests.fuzz.support import fuzz_settings, kept_on_failure, mutated, seeds

pytestmark = pytest.mark.timeout(300)
RATE = 8000
MAX_KEY_CHARS = 64


def assert_bounded(tags: TrackTags) -> None:
    assert isinstance(tags, TrackTags)
    for name in ("title", "artist", "album", "isrc"):
        value = getattr(tags, name)
        assert isinstance(value, str) and len(value) <= MAX_VALUE_CHARS
        assert value == value.strip() and all(c.isprintable() or c == "\t" for c in value)
    assert len(tags.extra) <= MAX_EXTRA_KEYS
    for key, value in tags.extra.items():
        assert 0 < len(key) <= MAX_KEY_CHARS and key.isprintable()
        assert 0 < len(value) <= MAX_VALUE_CHARS and value == value.strip()


@fuzz_settings(200)
@given(mutated(seeds()))
def test_tags_of_mutated_files(data: bytes) -> None:
    with kept_on_failure("audio", "tags", data):
        assert_bounded(read_tags(data))


text = st.text(st.characters(codec="utf-8"), max_size=3000)


@st.composite
def request_metadata(draw: st.DrawFn) -> common_pb2.TrackMetadata:
    """What an Upload header may carry: any UTF-8, any number of extra keys."""
    return common_pb2.TrackMetadata(
        title=draw(text),
        artist=draw(text),
        album=draw(st.text(max_size=20)),
        isrc=draw(st.text(max_size=40)),
        extra=draw(st.dictionaries(st.text(max_size=100), text, max_size=80)),
    )


@fuzz_settings(200)
@given(st.sampled_from(seeds()), request_metadata())
def test_merged_tags_are_bounded(data: bytes, metadata: common_pb2.TrackMetadata) -> None:
    with kept_on_failure("metadata", "merge", metadata.SerializeToString()):
        merged = merge(read_tags(data), metadata)
        assert_bounded(merged)
        refusal = check_tags(merged, ("title", "artist"))
        assert refusal is None or refusal.code == common_pb2.REJECTION_CODE_MISSING_METADATA


@st.composite
def signals(draw: st.DrawFn) -> np.ndarray:
    """Pieces of silence, DC, square waves, tones, noise and clicks, any length."""
    pieces = []
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.one_of(st.integers(0, 2048), st.integers(0, 6 * RATE)))
        kind = draw(st.sampled_from(("silence", "dc", "square", "tone", "noise", "clicks")))
        level = draw(st.sampled_from([0.0, 1e-6, 0.01, 0.5, 1.0]))
        t = np.arange(n) / RATE
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        if kind == "silence":
            piece = np.zeros(n)
        elif kind == "dc":
            piece = np.full(n, level)
        elif kind == "square":
            piece = level * np.sign(np.sin(2 * np.pi * 50 * t))
        elif kind == "tone":
            piece = level * np.sin(2 * np.pi * draw(st.floats(20, 3999)) * t)
        elif kind == "noise":
            piece = level * rng.uniform(-1, 1, n)
        else:
            piece = np.zeros(n)
            piece[:: max(1, RATE // 4)] = level
        pieces.append(piece)
    return np.concatenate(pieces).astype(np.float32)


@fuzz_settings(100)
@given(signals(), st.sampled_from([0.0, 3.0]), st.sampled_from([True, False]))
@example(np.zeros(0, dtype=np.float32), 0.0, False)  # no samples at all: refused, not NaN
@example(np.zeros(100, dtype=np.float32), 0.0, True)
def test_audio_checks_answer_a_refusal_or_nothing(
    samples: np.ndarray, min_duration_s: float, music_check: bool
) -> None:
    """The checks in intake.validate's order; EARMARK_MIN_DURATION_S may be 0."""
    audio = DecodedAudio(samples=samples, sample_rate_hz=RATE, container="wav")
    blob = np.asarray(samples, dtype="<f4").tobytes()
    with kept_on_failure("samples", "audio-checks", blob, ".f32"):
        refusal = check_audio(audio, min_duration_s=min_duration_s, max_duration_s=7200.0)
        if refusal is None:
            refusal = check_content(audio, max_clipping=0.2, music_check=music_check)
        assert refusal is None or (isinstance(refusal, Refusal) and refusal.message)
        if refusal is None:
            assert samples.size > 0, "empty audio must be refused"
