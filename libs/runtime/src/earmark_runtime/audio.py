"""Decoding untrusted audio with ffmpeg.

ffmpeg runs as a child process reading from a pipe, with a protocol whitelist
so that a crafted file (a playlist, a concat script) cannot make it open other
files or the network, with a wall-clock limit (the child is killed when it
runs over) and an address-space limit (EARMARK_FFMPEG_MEMORY_MB), so a crafted
file that makes a decoder allocate gigabytes fails inside the child instead of
exhausting the pod. Only the first audio stream is decoded; video, subtitle and
data streams are dropped.
"""

from __future__ import annotations

import asyncio
import io
import re
import resource
import signal
import wave
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

from .config import load_settings


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


# The child dies of one of these, or says so, when it cannot get memory under its limit.
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGKILL}
# The last one is the dynamic loader failing to map ffmpeg's own libraries: a limit
# below what the binary needs to start (it then exits 127 before reading input).
_MEMORY_MESSAGES = ("cannot allocate memory", "out of memory", "enomem", "failed to map segment")


class FfmpegMemoryError(AudioDecodeError):
    """ffmpeg needed more memory than EARMARK_FFMPEG_MEMORY_MB allows."""


def ffmpeg_memory_mb() -> int:
    """The address-space limit of ffmpeg children from EARMARK_FFMPEG_MEMORY_MB (0: none)."""
    return load_settings("ffmpeg").ffmpeg_memory_mb


def limit_memory(pid: int, memory_mb: int) -> None:
    """Cap the address space of child `pid` at `memory_mb` MiB.

    Applied right after the child starts and before it is given any input: ffmpeg
    blocks reading stdin before any allocation that depends on the file, so the
    limit is in place for all of those. No Python code runs between fork and exec
    (preexec_fn is unsafe in a process with threads) and no extra shell is spawned.
    """
    limit = memory_mb * 1024 * 1024
    resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))


def memory_failure(returncode: int, stderr: str, memory_mb: int) -> FfmpegMemoryError | None:
    """The error to raise when a child under a memory limit failed for lack of memory."""
    if memory_mb <= 0:
        return None
    crashed = returncode < 0 and -returncode in _CRASH_SIGNALS
    if crashed or any(m in stderr.lower() for m in _MEMORY_MESSAGES):
        return FfmpegMemoryError(
            f"ffmpeg needed more than its {memory_mb} MiB memory limit (EARMARK_FFMPEG_MEMORY_MB) "
            "for this file; it was refused"
        )
    return None


def input_container(stderr: str) -> tuple[str, str | None]:
    """The container ffmpeg reports opening, and why it is refused (None: it is not)."""
    match = _INPUT_RE.search(stderr)
    container = match.group(1).split(",")[0] if match else ""
    if container in _REFERENCING_DEMUXERS:
        return container, f"{container} input references other media and is refused"
    if container in _NON_AUDIO_DEMUXERS:
        return container, f"the input is an image ({container}), not audio"
    return container, None


async def spawn_ffmpeg(
    args: list[str], *, stdin: bool, memory_mb: int | None
) -> tuple[asyncio.subprocess.Process, int]:
    """Start an ffmpeg child under its memory limit; (process, limit in MiB, 0: none).

    Fails closed: untrusted input is never decoded without the limit asked for.
    """
    limit = ffmpeg_memory_mb() if memory_mb is None else memory_mb
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    if limit > 0:
        try:
            limit_memory(proc.pid, limit)
        except OSError as exc:
            proc.kill()
            await proc.wait()
            raise RuntimeError(
                f"cannot limit ffmpeg's memory ({exc}); set EARMARK_FFMPEG_MEMORY_MB=0 to run "
                "without a limit"
            ) from exc
    return proc, limit


def last_error_line(stderr: str) -> str:
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
    except Exception:
        # Anything odd goes to ffmpeg, which judges it. The wave module raises more
        # than wave.Error on damaged headers: RuntimeError for a truncated chunk
        # header (corpus/audio/wav-truncated-data-chunk.wav), struct.error, ...
        return None
    if channels < 1 or not MIN_PCM_RATE_HZ <= rate <= MAX_PCM_RATE_HZ:
        return None
    raw = raw[: len(raw) - len(raw) % (2 * channels)]
    if not raw:  # not one whole frame (corpus/audio/wav-one-byte-of-data.wav)
        return None
    samples = pcm16_to_float(raw, rate, channels, sample_rate_hz)
    return DecodedAudio(samples=samples, sample_rate_hz=sample_rate_hz, container="wav")


async def run_ffmpeg(
    args: list[str], data: bytes, *, timeout_s: float, memory_mb: int | None = None
) -> tuple[int, bytes, str]:
    """Run ffmpeg on `data` (stdin); (exit code, stdout, stderr).

    The child gets an address-space limit of `memory_mb` MiB (None: the
    EARMARK_FFMPEG_MEMORY_MB setting, 0: none) and raises FfmpegMemoryError when
    it failed for lack of memory. Raises TimeoutError after killing it when it
    outlives `timeout_s`.
    """
    proc, limit = await spawn_ffmpeg(args, stdin=True, memory_mb=memory_mb)
    try:
        out, err = await asyncio.wait_for(proc.communicate(data), timeout=timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    returncode, stderr = proc.returncode or 0, err.decode("utf-8", "replace")
    failure = memory_failure(returncode, stderr, limit)
    if failure is not None:
        raise failure
    return returncode, out, stderr


DECODE_TIMEOUT_S = 120.0


async def decode_audio(
    data: bytes,
    *,
    sample_rate_hz: int,
    ffmpeg: str = "",
    max_seconds: float | None = None,
    timeout_s: float = DECODE_TIMEOUT_S,
    memory_mb: int | None = None,
) -> DecodedAudio:
    """Decode any container ffmpeg understands to float32 mono at `sample_rate_hz`.

    `memory_mb` limits ffmpeg's address space (None: EARMARK_FFMPEG_MEMORY_MB).
    Raises AudioDecodeError with the reason for anything that is not audio, is
    refused, or runs over a limit.
    """
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
        returncode, out, stderr = await run_ffmpeg(
            args, data, timeout_s=timeout_s, memory_mb=memory_mb
        )
    except TimeoutError as exc:
        raise AudioDecodeError(f"decoding took longer than {timeout_s:.0f} s") from exc
    container, refusal = input_container(stderr)
    if refusal is not None:
        raise AudioDecodeError(refusal)
    if returncode != 0:
        if "matches no streams" in stderr:
            raise AudioDecodeError("the file has no audio stream")
        if returncode < 0:
            raise AudioDecodeError(f"ffmpeg crashed on the file (signal {-returncode})")
        raise AudioDecodeError(f"not decodable as audio: {last_error_line(stderr)}")
    samples = np.frombuffer(out, dtype="<f4").astype(np.float32, copy=False)
    if samples.size == 0:
        raise AudioDecodeError("the file decodes to no audio samples")
    if not np.all(np.isfinite(samples)):
        samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    return DecodedAudio(samples=samples, sample_rate_hz=sample_rate_hz, container=container)


# Sample rates raw PCM may declare: a telephone line to 8x 96 kHz studio audio.
MIN_PCM_RATE_HZ = 1000
MAX_PCM_RATE_HZ = 768_000
# Largest up/down factor of the polyphase resampler. Its filter has ~20 taps per
# unit of the larger factor: for the gcd-reduced ratio of an odd rate (999983 Hz
# -> 8000 Hz is 8000/999983) that was 20 million taps and seconds of CPU per call.
# Every common rate reduces to at most 441 (44.1 kHz family) and stays exact.
MAX_RESAMPLE_FACTOR = 1000


def resample_ratio(from_rate_hz: int, to_rate_hz: int) -> tuple[int, int]:
    """(up, down) of the polyphase resampler, both at most MAX_RESAMPLE_FACTOR.

    Exact for common rates; an odd rate is approximated by the closest fraction
    with small terms, within 0.06 % in speed for any rate up to MAX_PCM_RATE_HZ
    (a 60 s clip drifts by 36 ms, about one landmark frame).
    """
    if to_rate_hz <= from_rate_hz:
        down_ratio = Fraction(to_rate_hz, from_rate_hz).limit_denominator(MAX_RESAMPLE_FACTOR)
        return max(1, down_ratio.numerator), down_ratio.denominator
    up_ratio = Fraction(from_rate_hz, to_rate_hz).limit_denominator(MAX_RESAMPLE_FACTOR)
    return up_ratio.denominator, max(1, up_ratio.numerator)


def pcm16_to_float(
    samples: bytes, sample_rate_hz: int, channels: int, target_rate_hz: int
) -> np.ndarray:
    """Raw s16le interleaved PCM to float32 mono at `target_rate_hz`."""
    if channels < 1:
        raise AudioDecodeError("PCM audio needs at least one channel")
    if not MIN_PCM_RATE_HZ <= sample_rate_hz <= MAX_PCM_RATE_HZ:
        raise AudioDecodeError(
            f"PCM sample rate {sample_rate_hz} Hz is outside "
            f"{MIN_PCM_RATE_HZ}..{MAX_PCM_RATE_HZ} Hz"
        )
    if len(samples) % (2 * channels):
        raise AudioDecodeError("PCM byte count is not a whole number of frames")
    pcm = np.frombuffer(samples, dtype="<i2").astype(np.float32) / 32768.0
    mono = pcm.reshape(-1, channels).mean(axis=1) if channels > 1 else pcm
    if sample_rate_hz == target_rate_hz or mono.size == 0:
        return mono.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    up, down = resample_ratio(sample_rate_hz, target_rate_hz)
    return np.asarray(resample_poly(mono, up, down), dtype=np.float32)
