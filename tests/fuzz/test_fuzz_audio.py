"""Fuzzing the audio decoders: whatever the bytes, decoding either returns finite
mono float32 samples within the duration cap or raises AudioDecodeError with a
reason. Any other exception, a hang (pytest-timeout) or a crash is a bug."""

from __future__ import annotations

import asyncio
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from earmark_runtime.audio import (
    MAX_RESAMPLE_FACTOR,
    AudioDecodeError,
    DecodedAudio,
    decode_audio,
    pcm16_to_float,
    resample_ratio,
)
from tests.fuzz.support import INTERESTING_U32, fuzz_settings, kept_on_failure, mutated, seeds

RATE = 8000
pytestmark = pytest.mark.timeout(300)


def decode_or_refuse(data: bytes, max_seconds: float | None = None) -> DecodedAudio | None:
    """Decode under the production limits; None when refused with AudioDecodeError."""
    try:
        decoded = asyncio.run(
            decode_audio(
                data, sample_rate_hz=RATE, max_seconds=max_seconds, timeout_s=30, memory_mb=1024
            )
        )
    except AudioDecodeError as exc:
        assert str(exc), "a refusal must say why"
        return None
    samples = decoded.samples
    assert samples.dtype == np.float32 and samples.ndim == 1 and samples.size > 0
    assert np.isfinite(samples).all()
    assert decoded.sample_rate_hz == RATE
    if max_seconds is not None:
        assert decoded.duration_s <= max_seconds + 1.0 + 1e-3
    return decoded


@fuzz_settings(40)
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    with kept_on_failure("audio", "random-bytes", data):
        decode_or_refuse(data)


@fuzz_settings(80)
@given(mutated(seeds()), st.sampled_from([None, 0.2, 2.0]))
def test_mutated_files_of_every_container(data: bytes, max_seconds: float | None) -> None:
    with kept_on_failure("audio", "mutated-file", data):
        decode_or_refuse(data, max_seconds)


@st.composite
def wav_files(draw: st.DrawFn) -> bytes:
    """RIFF/WAVE files whose fmt fields and chunk sizes are drawn, not computed.

    16-bit PCM headers are decoded in-process (audio._decode_pcm_wav); the others
    go to ffmpeg, so most draws stay 16-bit PCM to keep the suite fast.
    """
    fmt_tag = draw(st.sampled_from([1, 1, 1, 1, 3, 6, 0xFFFE, 0, 0x55]))
    channels = draw(st.one_of(st.integers(1, 2), st.integers(0, 0xFFFF)))
    rate = draw(
        st.one_of(
            st.sampled_from([8000, 11025, 22050, 44100, 48000, 96000]),
            st.sampled_from(INTERESTING_U32),
            st.integers(0, 0xFFFFFFFF),
        )
    )
    bits = draw(st.sampled_from([16, 16, 16, 8, 24, 32, 0, 12]))
    block_align = channels * max(1, bits // 8)
    payload = draw(st.binary(max_size=2048))
    data_size = draw(st.one_of(st.just(len(payload)), st.sampled_from([0, 1, 0xFFFFFFFF])))
    fmt = struct.pack(
        "<HHIIHH", fmt_tag, channels, rate, (rate * block_align) & 0xFFFFFFFF,
        block_align & 0xFFFF, bits,
    )  # fmt: skip
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", data_size) + payload
    riff_size = draw(st.one_of(st.just(len(body)), st.sampled_from([0, 4, 0xFFFFFFFF])))
    return b"RIFF" + struct.pack("<I", riff_size) + body


@fuzz_settings(200)
@given(wav_files())
def test_wav_headers(data: bytes) -> None:
    with kept_on_failure("audio", "wav-header", data, ".wav"):
        decode_or_refuse(data, max_seconds=60.0)


@fuzz_settings(300)
@given(
    st.binary(max_size=4096),
    st.one_of(
        st.sampled_from([8000, 16000, 44100, 48000]),
        st.sampled_from(INTERESTING_U32),
        st.integers(0, 0xFFFFFFFF),
    ),
    st.one_of(st.integers(1, 8), st.sampled_from(INTERESTING_U32), st.integers(0, 0xFFFFFFFF)),
)
def test_raw_pcm_conversion(samples: bytes, rate: int, channels: int) -> None:
    """pcm16_to_float takes PcmAudio straight from an ExtractFingerprint request."""
    blob = struct.pack("<II", rate, channels) + samples
    with kept_on_failure("pcm", "raw-pcm", blob):
        try:
            out = pcm16_to_float(samples, rate, channels, RATE)
        except AudioDecodeError:
            return
        assert out.dtype == np.float32 and out.ndim == 1 and np.isfinite(out).all()
        frames = len(samples) // (2 * channels)
        assert out.size <= frames * RATE / rate + 8


@fuzz_settings(300)
@given(st.integers(1000, 768_000), st.sampled_from([8000, 16000, 22050, 44100, 48000]))
def test_resampling_filter_stays_small(from_rate: int, to_rate: int) -> None:
    """The resampler's cost grows with its up/down factors: they must stay bounded
    whatever rate a client declares (corpus/pcm/rate-999983-slow-resample.bin)."""
    up, down = resample_ratio(from_rate, to_rate)
    assert 1 <= up <= MAX_RESAMPLE_FACTOR and 1 <= down <= MAX_RESAMPLE_FACTOR
    assert abs(up / down * from_rate / to_rate - 1) <= 6e-4
