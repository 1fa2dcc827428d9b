"""Accepted tracks get delivery renditions that list on the track and download."""

from __future__ import annotations

import time

import grpc
import pytest

from bench.corpus import decode_audio
from bench.synthetic import encode, song
from earmark import Earmark


def _wait_for_renditions(client: Earmark, track_id: str, count: int) -> tuple[str, ...]:
    deadline = time.monotonic() + 120
    while True:
        renditions = client.track(track_id).renditions
        if len(renditions) >= count or time.monotonic() > deadline:
            return renditions
        time.sleep(0.3)


def test_renditions_exist_download_and_decode_to_the_right_duration(
    client: Earmark, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    sub = client.upload(encode(song(400, seconds=12), "flac"), external_id="rendition-source.flac")
    (final,) = client.wait([sub.submission_id], timeout_s=90)
    assert final.state == "INDEXED"
    names = _wait_for_renditions(client, final.track_id, 4)
    assert names == ("aac-256", "mp3-128", "mp3-320", "opus-96")
    for wanted, suffix in [
        ("opus", "opus"),
        ("mp3-128", "mp3"),
        ("aac-256", "m4a"),
        ("source", "flac"),
    ]:
        path = tmp_path / f"out.{suffix}"
        path.write_bytes(b"".join(client.download(final.track_id, wanted)))
        duration = len(decode_audio(path, 8000)) / 8000
        assert duration == pytest.approx(12.0, abs=0.1), wanted


def test_unknown_rendition_and_deleted_track_are_refused(client: Earmark) -> None:
    sub = client.upload(encode(song(401, seconds=8), "mp3"), external_id="rendition-deleted.mp3")
    (final,) = client.wait([sub.submission_id], timeout_s=90)
    with pytest.raises(grpc.RpcError) as err:
        b"".join(client.download(final.track_id, "wav-9000"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no rendition 'wav-9000'" in (err.value.details() or "")
    _wait_for_renditions(client, final.track_id, 4)
    client.delete_track(final.track_id)
    deadline = time.monotonic() + 120
    while client.submission(final.submission_id).state != "DELETED":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with pytest.raises(grpc.RpcError) as err:
        b"".join(client.download(final.track_id, "opus"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
