"""ffmpeg on untrusted input: memory and time limits, audio streams only, no
reading of other files. The memory-hungry input is a real one: an ALAC file
whose header asks the decoder for ~1.5 GB of buffers (corpus/audio/seed-alac-bomb.m4a,
made by tests/fuzz/make_seeds.py)."""

from __future__ import annotations

import asyncio

import pytest

from earmark_ingest.renditions import RenditionError, RenditionSpec, transcode
from earmark_runtime.audio import AudioDecodeError, FfmpegMemoryError, decode_audio
from tests.fuzz.support import CORPUS

AUDIO = CORPUS / "audio"


def _seed(name: str) -> bytes:
    return (AUDIO / f"seed-{name}").read_bytes()


def _decode(data: bytes, **kwargs: object):  # type: ignore[no-untyped-def]
    return asyncio.run(decode_audio(data, sample_rate_hz=8000, **kwargs))  # type: ignore[arg-type]


def test_a_memory_bomb_is_refused_under_the_default_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EARMARK_FFMPEG_MEMORY_MB", raising=False)  # the default: 1024 MiB
    with pytest.raises(FfmpegMemoryError, match="more than its 1024 MiB memory limit"):
        _decode(_seed("alac-bomb.m4a"))


def test_the_limit_is_what_refuses_the_bomb() -> None:
    # Without a limit ffmpeg reserves the buffers and decodes the 0.1 s file.
    decoded = _decode(_seed("alac-bomb.m4a"), memory_mb=0)
    assert decoded.duration_s == pytest.approx(0.1, abs=0.02)


@pytest.mark.parametrize("name", ["tone.mp3", "tone.flac", "tone.ogg", "tone.opus", "tone.m4a"])
def test_normal_files_decode_under_the_default_limit(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EARMARK_FFMPEG_MEMORY_MB", raising=False)
    decoded = _decode(_seed(name))
    assert decoded.duration_s == pytest.approx(0.5, abs=0.2)
    assert float(abs(decoded.samples).max()) > 0.1


def test_the_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # 64 MiB is less than the ffmpeg binary needs to start: every file is refused.
    monkeypatch.setenv("EARMARK_FFMPEG_MEMORY_MB", "64")
    with pytest.raises(FfmpegMemoryError, match="64 MiB"):
        _decode(_seed("tone.mp3"))


def test_only_the_audio_stream_of_a_video_is_decoded() -> None:
    decoded = _decode(_seed("video.mkv"))
    assert decoded.container == "matroska"
    assert decoded.duration_s == pytest.approx(0.4, abs=0.05)


@pytest.mark.parametrize("name", ["playlist.m3u8", "concat.ffconcat"])
def test_files_naming_other_files_or_urls_are_refused(name: str) -> None:
    with pytest.raises(AudioDecodeError):
        _decode(_seed(name))


def test_ffmpeg_is_killed_at_the_time_limit() -> None:
    # Forty copies of the FLAC seed: far more work than a millisecond allows.
    with pytest.raises(AudioDecodeError, match="longer than"):
        _decode(_seed("tone.flac") * 40, timeout_s=0.001)


def test_renditions_run_under_the_same_limits() -> None:
    spec = RenditionSpec("mp3-128", "mp3", 128)
    with pytest.raises(RenditionError, match="memory limit"):
        asyncio.run(transcode(_seed("alac-bomb.m4a"), spec, memory_mb=1024))
    data = asyncio.run(transcode(_seed("tone.flac"), spec, memory_mb=1024))
    assert _decode(data).duration_s == pytest.approx(0.5, abs=0.1)
