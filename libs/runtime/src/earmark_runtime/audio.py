"""Decoding untrusted audio with ffmpeg.

ffmpeg runs as a child process reading from a pipe, with a protocol whitelist
so that a crafted file (a playlist, a concat script) cannot make it open other
files or the network, and with a wall-clock limit. Only the first audio stream
is decoded; video, subtitle and data streams are dropped.
"""

from __future__ import annotations

import asyncio
import io
import re
import wave
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


class AudioDecodeError(ValueError):
    """The bytes are not audio ffmpeg can decode."""


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32 mono in [-1, 1]
    sample_rate_hz: int
    container: str  # ffmpeg's demuxer name, e.g. "mp3", "ogg", "wav"

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate_hz


@lru_cache(maxsize=1)
def default_ffmpeg() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


_INPUT_RE = re.compile(r"Input #0, ([\w,]+), from")
# Demuxers that read other files or URLs named inside the input.
_REFERENCING_DEMUXERS = {"concat", "hls", "applehttp", "dash", "ffconcat", "image2", "tee"}
# Containers that are images or video-only even though ffmpeg opens them.
_NON_AUDIO_DEMUXERS = {
    "png_pipe",
    "jpeg_pipe",
    "gif",
    "bmp_pipe",
    "webp_pipe",
    "tiff_pipe",
    "svg_pipe",
}


def _last_error_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for line in reversed(lines):
        if "error" in line.lower() or "invalid" in line.lower() or "not" in line.lower():
            return line[:300]
    return lines[-1][:300] if lines else "no output from ffmpeg"


def _decode_pcm_wav(
    data: bytes, sample_rate_hz: int, max_seconds: float | None
) -> DecodedAudio | None:
    """Plain 16-bit PCM WAV without spawning ffmpeg: most clips arrive like this.

    Returns None for anything else (the caller falls back to ffmpeg).
    """
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    try:
        with wave.open(io.BytesIO(data)) as wav:
            if wav.getsampwidth() != 2 or wav.getcomptype() != "NONE":
                return None
            channels, rate, frames = wav.getnchannels(), wav.getframerate(), wav.getnframes()
            if max_seconds is not None:
                frames = min(frames, int((max_seconds + 1.0) * rate))
            raw = wav.readframes(frames)
    except (wave.Error, EOFError, ValueError):
        return None
    if not raw or rate < 1000 or channels < 1:
        return None
    raw = raw[: len(raw) - len(raw) % (2 * channels)]
    samples = pcm16_to_float(raw, rate, channels, sample_rate_hz)
    return DecodedAudio(samples=samples, sample_rate_hz=sample_rate_hz, container="wav")


async def run_ffmpeg(args: list[str], data: bytes, *, timeout_s: float) -> tuple[int, bytes, str]:
    """Run ffmpeg on `data` (stdin); (exit code, stdout, stderr). Raises TimeoutError
    after killing it when it outlives `timeout_s`."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(data), timeout=timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out, err.decode("utf-8", "replace")


async def decode_audio(
    data: bytes,
    *,
    sample_rate_hz: int,
    ffmpeg: str = "",
    max_seconds: float | None = None,
    timeout_s: float = 120.0,
) -> DecodedAudio:
    """Decode any container ffmpeg understands to float32 mono at `sample_rate_hz`."""
    if not data:
        raise AudioDecodeError("empty input: no bytes to decode")
    fast = await asyncio.to_thread(_decode_pcm_wav, data, sample_rate_hz, max_seconds)
    if fast is not None:
        return fast
    args = [
        ffmpeg or default_ffmpeg(),
        "-nostdin",
        "-hide_banner",
        "-protocol_whitelist",
        "pipe",
        "-i",
        "pipe:0",
        "-map",
        "0:a:0",
        "-vn",
        "-sn",
        "-dn",
        "-ac",
        "1",
        "-ar",
        str(sample_rate_hz),
        "-f",
        "f32le",
    ]
    if max_seconds is not None:
        # Decode one second past the limit, so that "too long" is detectable.
        args += ["-t", f"{max_seconds + 1.0:.3f}"]
    args.append("pipe:1")
    try:
        returncode, out, stderr = await run_ffmpeg(args, data, timeout_s=timeout_s)
    except TimeoutError as exc:
        raise AudioDecodeError(f"decoding took longer than {timeout_s:.0f} s") from exc
    match = _INPUT_RE.search(stderr)
    container = match.group(1).split(",")[0] if match else ""
    if container in _REFERENCING_DEMUXERS:
        raise AudioDecodeError(f"{container} files reference other media and are refused")
    if container in _NON_AUDIO_DEMUXERS:
        raise AudioDecodeError(f"the file is an image ({container}), not audio")
    if returncode != 0:
        if "matches no streams" in stderr:
            raise AudioDecodeError("the file has no audio stream")
        raise AudioDecodeError(f"not decodable as audio: {_last_error_line(stderr)}")
    samples = np.frombuffer(out, dtype="<f4").astype(np.float32, copy=False)
    if samples.size == 0:
        raise AudioDecodeError("the file decodes to no audio samples")
    if not np.all(np.isfinite(samples)):
        samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    return DecodedAudio(samples=samples, sample_rate_hz=sample_rate_hz, container=container)


def pcm16_to_float(
    samples: bytes, sample_rate_hz: int, channels: int, target_rate_hz: int
) -> np.ndarray:
    """Raw s16le interleaved PCM to float32 mono at `target_rate_hz`."""
    if channels < 1:
        raise AudioDecodeError("PCM audio needs at least one channel")
    if sample_rate_hz < 1000:
        raise AudioDecodeError(f"PCM sample rate {sample_rate_hz} Hz is too low")
    if len(samples) % (2 * channels):
        raise AudioDecodeError("PCM byte count is not a whole number of frames")
    pcm = np.frombuffer(samples, dtype="<i2").astype(np.float32) / 32768.0
    mono = pcm.reshape(-1, channels).mean(axis=1) if channels > 1 else pcm
    if sample_rate_hz == target_rate_hz or mono.size == 0:
        return mono.astype(np.float32, copy=False)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(sample_rate_hz, target_rate_hz)
    return np.asarray(
        resample_poly(mono, target_rate_hz // g, sample_rate_hz // g), dtype=np.float32
    )
