"""Synthetic music for tests, the demo and benchmark distractors: deterministic, distinct per seed.

Notes of random pitch and length with harmonics and decaying envelopes, plus
a noise-burst percussion track; enough spectral structure for landmarks, and
no two seeds alike.
"""

from __future__ import annotations

import io
import subprocess
import wave

import numpy as np


def song(seed: int, seconds: float = 30.0, sample_rate: int = 22050) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    out = np.zeros(n, dtype=np.float64)
    pos = 0
    while pos < n:
        length = int(rng.uniform(0.1, 0.5) * sample_rate)
        freq = 110.0 * 2 ** (rng.integers(0, 36) / 12)
        end = min(n, pos + length)
        t = np.arange(end - pos) / sample_rate
        env = np.exp(-t * rng.uniform(2.0, 8.0))
        for harmonic in range(1, 5):
            out[pos:end] += env * np.sin(2 * np.pi * freq * harmonic * t) / harmonic
        pos = end
    beat = int(rng.uniform(0.35, 0.6) * sample_rate)
    for start in range(0, n, beat):
        hit = min(n, start + sample_rate // 20)
        out[start:hit] += (
            0.3 * rng.standard_normal(hit - start) * np.exp(-np.arange(hit - start) / 300)
        )
    out /= np.abs(out).max() * 1.1
    return out.astype(np.float32)


def wav_bytes(samples: np.ndarray, sample_rate: int = 22050) -> bytes:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


# Containers a benchmark clip can be uploaded in: WAV is parsed by the server,
# every other one is decoded by its ffmpeg, as a user's upload would be.
CLIP_FORMATS = ("wav", "mp3", "ogg", "flac", "opus")


def clip_bytes(samples: np.ndarray, sample_rate: int, fmt: str = "wav") -> bytes:
    """A clip as uploaded in `fmt` (one of CLIP_FORMATS; lossy ones at 128 kbps)."""
    if fmt == "wav":
        return wav_bytes(samples, sample_rate)
    return encode(samples, fmt, sample_rate)


def encode(
    samples: np.ndarray,
    fmt: str,
    sample_rate: int = 22050,
    bitrate: str = "128k",
    metadata: dict[str, str] | None = None,
) -> bytes:
    """Encode with the ffmpeg binary from imageio-ffmpeg (mp3, ogg, flac ...)."""
    import imageio_ffmpeg

    codec = {"mp3": "libmp3lame", "ogg": "libvorbis", "flac": "flac", "opus": "libopus"}[fmt]
    muxer = {"mp3": "mp3", "ogg": "ogg", "flac": "flac", "opus": "ogg"}[fmt]
    # libvorbis refuses most fixed bitrates at low sample rates; it is quality-driven anyway.
    rate = ["-q:a", "3"] if fmt == "ogg" else ["-b:a", bitrate]
    result = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "wav",
            "-i",
            "pipe:0",
            "-c:a",
            codec,
            *rate,
            *[arg for k, v in (metadata or {}).items() for arg in ("-metadata", f"{k}={v}")],
            "-f",
            muxer,
            "pipe:1",
        ],
        input=wav_bytes(samples, sample_rate),
        capture_output=True,
        check=True,
    )
    return result.stdout


def add_noise(samples: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(len(samples))
    power = np.mean(samples.astype(np.float64) ** 2)
    noise *= np.sqrt(power / (10 ** (snr_db / 10)) / np.mean(noise**2))
    mixed = samples + noise
    return (mixed / max(1.0, np.abs(mixed).max())).astype(np.float32)
