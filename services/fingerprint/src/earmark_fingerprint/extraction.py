"""Audio in, landmark fingerprint out: the domain step shared by the RPC and the consumer."""

from __future__ import annotations

import asyncio
import io
import wave

import numpy as np

from earmark.v1 import common_pb2, fingerprint_pb2
from earmark_runtime.audio import AudioDecodeError, decode_audio, pcm16_to_float

from .landmarks import (
    ALGORITHM_VERSION,
    RESCALE_FACTORS,
    SAMPLE_RATE_HZ,
    Landmarks,
    extract_landmarks,
    extract_query_landmarks,
    extract_rescaled_query_landmarks,
)
from .neural import (
    CATALOG_HOP_S,
    MODEL_NAME,
    Embeddings,
    default_embedder,
    max_query_segments,
    pitch_view_scales,
    query_hop_s,
)


def to_proto(landmarks: Landmarks) -> common_pb2.LandmarkFingerprint:
    return common_pb2.LandmarkFingerprint(
        algorithm_version=ALGORITHM_VERSION,
        frame_rate_hz=landmarks.frame_rate_hz,
        hashes=np.ascontiguousarray(landmarks.hashes, dtype="<u4").tobytes(),
        times=np.ascontiguousarray(landmarks.times, dtype="<u4").tobytes(),
        duration_s=landmarks.duration_s,
        peak_times=np.ascontiguousarray(landmarks.peak_times, dtype="<u4").tobytes(),
        peak_bins=np.ascontiguousarray(landmarks.peak_bins, dtype="<u4").tobytes(),
    )


async def samples_of(
    audio: common_pb2.AudioInput,
    *,
    ffmpeg: str,
    max_seconds: float,
    memory_mb: int | None = None,
) -> np.ndarray:
    """Decode an AudioInput to float32 mono at the fingerprinter's rate."""
    kind = audio.WhichOneof("source")
    if kind == "encoded":
        decoded = await decode_audio(
            audio.encoded,
            sample_rate_hz=SAMPLE_RATE_HZ,
            ffmpeg=ffmpeg,
            max_seconds=max_seconds,
            memory_mb=memory_mb,
        )
        samples = decoded.samples
    elif kind == "pcm":
        pcm = audio.pcm
        if not pcm.samples:
            raise AudioDecodeError("empty PCM audio")
        samples = await asyncio.to_thread(
            pcm16_to_float, pcm.samples, pcm.sample_rate_hz, pcm.channels or 1, SAMPLE_RATE_HZ
        )
    else:
        raise AudioDecodeError("no audio given: set audio.encoded or audio.pcm")
    return within_limit(samples, max_seconds)


def within_limit(samples: np.ndarray, max_seconds: float) -> np.ndarray:
    if len(samples) > max_seconds * SAMPLE_RATE_HZ:
        raise AudioDecodeError(f"audio is longer than the {max_seconds:.0f} s limit")
    return samples


def to_decoded(samples: np.ndarray) -> fingerprint_pb2.DecodedClip:
    """The samples a request was analysed from, for a follow-up request."""
    return fingerprint_pb2.DecodedClip(
        samples=np.ascontiguousarray(samples, dtype="<f4").tobytes(),
        sample_rate_hz=SAMPLE_RATE_HZ,
    )


def samples_of_decoded(clip: fingerprint_pb2.DecodedClip, *, max_seconds: float) -> np.ndarray:
    """A DecodedClip sent back: checked as strictly as any upload, never resampled."""
    if clip.sample_rate_hz != SAMPLE_RATE_HZ:
        raise AudioDecodeError(
            f"decoded audio must be at {SAMPLE_RATE_HZ} Hz, as this service returns it; "
            f"got {clip.sample_rate_hz} Hz"
        )
    if not clip.samples:
        raise AudioDecodeError("empty decoded audio")
    if len(clip.samples) % 4:
        raise AudioDecodeError("decoded audio is not a whole number of float32 samples")
    samples = np.frombuffer(clip.samples, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(samples)):
        raise AudioDecodeError("decoded audio holds samples that are not finite numbers")
    return within_limit(samples, max_seconds)


async def fingerprint(samples: np.ndarray, *, query: bool) -> common_pb2.LandmarkFingerprint:
    # numpy/scipy release the GIL for the heavy parts; keep the event loop free.
    extract = extract_query_landmarks if query else extract_landmarks
    landmarks = await asyncio.to_thread(extract, samples)
    return to_proto(landmarks)


async def rescaled_fingerprints(samples: np.ndarray) -> list[fingerprint_pb2.ScaledLandmarks]:
    variants = await asyncio.to_thread(extract_rescaled_query_landmarks, samples)
    return [
        fingerprint_pb2.ScaledLandmarks(frequency_scale=scale, landmarks=to_proto(landmarks))
        for scale, landmarks in zip(RESCALE_FACTORS, variants, strict=True)
    ]


async def neural_fingerprint(
    samples: np.ndarray, *, query: bool, freq_scale: float = 1.0
) -> common_pb2.NeuralFingerprint:
    """Neural segments: every CATALOG_HOP_S for a track, a denser hop for a query so
    that one of its segments lies near each catalog segment (``query_hop_s``; a
    pitch view, ``freq_scale`` != 1, gets fewer segments)."""
    embedder = await asyncio.to_thread(default_embedder)
    hop_s = _hop_s(samples, query, freq_scale)
    emb = await asyncio.to_thread(embedder.embed, samples, hop_s, freq_scale)
    return _to_proto(emb, hop_s, embedder.dim)


async def rescaled_neural_fingerprints(samples: np.ndarray) -> list[fingerprint_pb2.ScaledNeural]:
    """The query's segment vectors at each pitch view (neural.PITCH_VIEW_SEMITONES),
    every view's segments in one batched model run."""
    embedder = await asyncio.to_thread(default_embedder)
    scales = pitch_view_scales()
    hops = [_hop_s(samples, True, scale) for scale in scales]
    asked = list(zip(hops, scales, strict=True))
    views = await asyncio.to_thread(embedder.embed_views, samples, asked)
    return [
        fingerprint_pb2.ScaledNeural(
            frequency_scale=scale, neural=_to_proto(emb, hop_s, embedder.dim)
        )
        for scale, hop_s, emb in zip(scales, hops, views, strict=True)
    ]


async def warm_up() -> None:
    """Every extraction once on 2 s of noise, before the service reports SERVING:
    importing SciPy's resampler, building the ONNX session and the first runs
    cost ~0.7 s, which the first Identify after a start or a rollout would
    otherwise pay."""
    rate = 44_100  # a WAV upload's usual rate: its resampler is part of the first call
    noise = np.random.default_rng(0).standard_normal(2 * rate)
    wav = io.BytesIO()
    with wave.open(wav, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((3000 * noise).astype("<i2").tobytes())
    clip = await samples_of(common_pb2.AudioInput(encoded=wav.getvalue()), ffmpeg="", max_seconds=3)
    await asyncio.gather(
        fingerprint(clip, query=True),
        rescaled_fingerprints(clip),
        neural_fingerprint(clip, query=True),
        rescaled_neural_fingerprints(clip),
    )


def _hop_s(samples: np.ndarray, query: bool, freq_scale: float) -> float:
    if not query:
        return CATALOG_HOP_S
    return query_hop_s(samples.size, max_query_segments(freq_scale))


def _to_proto(emb: Embeddings, hop_s: float, dim: int) -> common_pb2.NeuralFingerprint:
    return common_pb2.NeuralFingerprint(
        model=MODEL_NAME,
        dim=dim,
        hop_s=hop_s,
        vectors=np.ascontiguousarray(emb.vectors, dtype="<f4").tobytes(),
        times=np.ascontiguousarray(emb.times_s, dtype="<f4").tobytes(),
    )
