"""Content and metadata checks at upload, with the default rules (title and artist required)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from bench.synthetic import encode, song, wav_bytes
from earmark import Earmark
from earmark_stack import StackInfo, down, up

SR = 22050


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Earmark]:
    home: Path = tmp_path_factory.mktemp("earmark-strict")
    info: StackInfo = up(home)
    try:
        with Earmark(ingest=info.addr("ingest"), search=info.addr("search")) as em:
            yield em
    finally:
        down(home)


def _refusal(client: Earmark, data: bytes, **metadata: str) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as err:
        client.upload(data, external_id="checked", metadata=metadata or None)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    code = dict(err.value.trailing_metadata() or ()).get("earmark-rejection-code", "")
    return code, err.value.details() or ""


def test_tags_in_the_file_satisfy_the_rule_and_reach_the_track(strict: Earmark) -> None:
    tagged = encode(song(700, seconds=10), "mp3", metadata={"title": "Tagged", "artist": "Band"})
    sub = strict.upload(tagged, external_id="tagged.mp3")
    (final,) = strict.wait([sub.submission_id], timeout_s=90)
    assert final.state == "INDEXED"
    track = strict.track(final.track_id)
    assert (track.title, track.artist) == ("Tagged", "Band")


def test_missing_tags_are_refused_unless_the_request_supplies_them(strict: Earmark) -> None:
    untagged = wav_bytes(song(701, seconds=10))
    code, message = _refusal(strict, untagged)
    assert code == "REJECTION_CODE_MISSING_METADATA"
    assert "title, artist" in message
    sub = strict.upload(untagged, external_id="given.wav", metadata={"title": "T", "artist": "A"})
    assert sub.state == "RECEIVED"


def test_request_values_override_file_tags(strict: Earmark) -> None:
    tagged = encode(song(702, seconds=10), "flac", metadata={"title": "Old", "artist": "Band"})
    sub = strict.upload(tagged, external_id="override.flac", metadata={"title": "New"})
    (final,) = strict.wait([sub.submission_id], timeout_s=90)
    track = strict.track(final.track_id)
    assert (track.title, track.artist) == ("New", "Band")


@pytest.mark.parametrize(
    "kind,make",
    [
        ("white noise", lambda rng: rng.standard_normal(10 * SR) * 0.3),
        ("sine tone", lambda rng: 0.5 * np.sin(2 * np.pi * 1000 * np.arange(10 * SR) / SR)),
        (
            "sweep",
            lambda rng: (
                0.5
                * np.sin(
                    2 * np.pi * (100 + 300 * np.arange(10 * SR) / SR) * np.arange(10 * SR) / SR
                )
            ),
        ),
    ],
)
def test_mock_audio_is_refused_as_not_music(strict: Earmark, kind: str, make) -> None:  # type: ignore[no-untyped-def]
    audio = make(np.random.default_rng(1)).astype(np.float32)
    code, _message = _refusal(strict, wav_bytes(audio), title="x", artist="y")
    assert code == "REJECTION_CODE_NOT_MUSIC", kind


def test_hard_clipped_audio_is_refused(strict: Earmark) -> None:
    clipped = np.clip(song(703, seconds=10) * 8, -1, 1)
    code, message = _refusal(strict, wav_bytes(clipped), title="x", artist="y")
    assert code == "REJECTION_CODE_CLIPPED"
    assert "full scale" in message
