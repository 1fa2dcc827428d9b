"""`bench.run --format`: query clips uploaded in each container decode to the
clip they came from, and identify_all sends them in the container asked for."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.degrade import Query
from bench.run import identify_all
from bench.synthetic import CLIP_FORMATS, clip_bytes, song
from earmark_runtime.audio import decode_audio

SR = 22050
MAGIC = {"wav": b"RIFF", "ogg": b"OggS", "opus": b"OggS", "flac": b"fLaC"}


def _starts_like(data: bytes, fmt: str) -> bool:
    if fmt == "mp3":  # an ID3 tag or an MPEG frame sync
        return data[:3] == b"ID3" or (data[0] == 0xFF and data[1] & 0xE0 == 0xE0)
    return data.startswith(MAGIC[fmt])


@pytest.mark.parametrize("fmt", CLIP_FORMATS)
def test_a_clip_decodes_to_itself_in_every_format(fmt: str) -> None:
    audio = song(11, seconds=3)
    data = clip_bytes(audio, SR, fmt)
    assert _starts_like(data, fmt)
    decoded = asyncio.run(decode_audio(data, sample_rate_hz=SR))
    assert decoded.duration_s == pytest.approx(3.0, abs=0.08)
    if fmt in ("wav", "flac"):  # lossless: the samples themselves come back
        n = min(decoded.samples.size, audio.size)
        assert np.corrcoef(decoded.samples[:n], audio[:n])[0, 1] > 0.999


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac"])
def test_identify_all_uploads_in_the_format_asked_for(fmt: str) -> None:
    sent: list[tuple[bytes, str]] = []

    def identify(data: bytes, method: str) -> SimpleNamespace:
        sent.append((data, method))
        return SimpleNamespace(match=None, latency_ms=1.0, server_ms=1.0)

    query = Query(
        query_id="q", track_path=Path("a.ogg"), track_id="a.ogg", package="p",
        condition="clean", length_s=2.0, offset_s=0.0, speed=1.0, pitch_semitones=0.0,
        snr_db=None, loop_period_s=None, negative=False, sr=SR, audio=song(5, seconds=2),
    )  # fmt: skip
    records = identify_all(
        SimpleNamespace(identify=identify), [query], ["landmarks", "neural"], clip_format=fmt
    )
    assert [m for _, m in sent] == ["neural", "landmarks"]  # turns rotate from query 1
    assert all(_starts_like(data, fmt) for data, _ in sent)
    assert sent[0][0] == sent[1][0]  # encoded once, the same bytes for every method
    assert len(records) == 2
