"""The same recording submitted again is REJECTED as a duplicate of the catalog track."""

from __future__ import annotations

import numpy as np

from bench.synthetic import encode, song, wav_bytes
from earmark import Earmark

SR = 22050


def _ingest(client: Earmark, data: bytes, external_id: str) -> tuple[str, str, str]:
    sub = client.upload(data, external_id=external_id)
    (final,) = client.wait([sub.submission_id], timeout_s=90)
    return final.state, final.track_id, final.rejection_code


def test_other_codec_trimmed_padded_or_louder_copies_are_duplicates(client: Earmark) -> None:
    original = song(300, seconds=25)
    state, track_id, _ = _ingest(client, encode(original, "flac"), "dup-original.flac")
    assert state == "INDEXED"
    silence = np.zeros(3 * SR, dtype=np.float32)
    copies = {
        "mp3 at 64 kbps": encode(original, "mp3", bitrate="64k"),
        "trimmed 4-20 s": wav_bytes(original[4 * SR : 20 * SR]),
        "padded with silence": wav_bytes(np.concatenate([silence, original, silence])),
        "3 dB quieter": encode(original * 10 ** (-3 / 20), "ogg"),
    }
    for name, data in copies.items():
        sub = client.upload(data, external_id=f"dup {name}")
        (final,) = client.wait([sub.submission_id], timeout_s=90)
        assert final.state == "REJECTED", name
        assert final.rejection_code == "DUPLICATE", name
        assert final.duplicate_of == track_id, name
        assert track_id in final.rejection_message, name
    # The catalog still holds one track for the recording.
    assert sum(t.external_id.startswith("dup") for t in client.tracks()) == 1


def test_a_different_recording_is_not_a_duplicate(client: Earmark) -> None:
    assert _ingest(client, wav_bytes(song(301, seconds=20)), "dup-other-a.wav")[0] == "INDEXED"
    assert _ingest(client, wav_bytes(song(302, seconds=20)), "dup-other-b.wav")[0] == "INDEXED"
