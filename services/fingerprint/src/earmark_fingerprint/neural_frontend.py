"""Log-mel frontend of the neural fingerprint, shared by training and serving.

Training (``training/``, package ``earmark-training``) feeds the model with
exactly this code, so the shipped ONNX model and the service see the same
features by construction. Everything is numpy and deterministic.

Layout: 8 kHz mono -> Hann-windowed frames of ``N_FFT`` samples every ``HOP``
samples (no padding) -> power spectrum -> ``N_MELS`` triangular mel bands over
``F_MIN_HZ``..``F_MAX_HZ`` -> dB. A *segment* is ``SEGMENT_FRAMES`` consecutive
frames (1.03 s of audio); the model normalises each segment's level itself.
"""

from __future__ import annotations

from functools import cache
from typing import Final

import numpy as np
import numpy.typing as npt
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view

SAMPLE_RATE_HZ: Final = 8000
# 64 ms window, 15.6 Hz bins: fine enough for 64 mel bands above 300 Hz.
N_FFT: Final = 512
# 31.25 ms; 0.5 s is exactly 16 hops, so segment grids line up with frames.
HOP: Final = 250
N_MELS: Final = 64
F_MIN_HZ: Final = 300.0
F_MAX_HZ: Final = 4000.0
SEGMENT_FRAMES: Final = 32
# Samples covered by one segment: 31 hops + one window = 8262 (1.033 s).
SEGMENT_SAMPLES: Final = (SEGMENT_FRAMES - 1) * HOP + N_FFT
# Power floor before the log: -100 dB re full scale keeps digital silence finite.
POWER_FLOOR: Final = 1e-10

FloatArray = npt.NDArray[np.float32]


def parameters() -> dict[str, float | int]:
    """What a model's sidecar records of the frontend it was trained with; serving
    refuses a model whose values differ from these."""
    return {
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "n_fft": N_FFT,
        "hop": HOP,
        "n_mels": N_MELS,
        "f_min_hz": F_MIN_HZ,
        "f_max_hz": F_MAX_HZ,
        "segment_frames": SEGMENT_FRAMES,
    }


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # HTK formula: simple, and the exact variant does not matter as long as
    # training and serving share it.
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@cache
def mel_matrix(freq_scale: float = 1.0) -> FloatArray:
    """[N_FFT // 2 + 1, N_MELS] triangular filters, each normalised to unit area.

    ``freq_scale`` multiplies every band edge: band b of audio pitched up by a
    factor ``s`` under ``mel_matrix(s)`` holds what band b of the original holds
    under ``mel_matrix()``. Search uses it to undo a query's pitch shift,
    training to simulate one (``1 / s``). A band pushed past Nyquist is silent.
    """
    if not 0.5 <= freq_scale <= 2.0:
        raise ValueError(f"freq_scale {freq_scale} outside 0.5..2")
    edges_hz = freq_scale * _mel_to_hz(
        np.linspace(_hz_to_mel(np.array(F_MIN_HZ)), _hz_to_mel(np.array(F_MAX_HZ)), N_MELS + 2)
    )
    bins_hz = np.arange(N_FFT // 2 + 1) * SAMPLE_RATE_HZ / N_FFT
    lo, centre, hi = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]
    up = (bins_hz[:, None] - lo) / (centre - lo)
    down = (hi - bins_hz[:, None]) / (hi - centre)
    weights = np.maximum(0.0, np.minimum(up, down))
    area = weights.sum(axis=0, keepdims=True)
    weights = np.divide(weights, area, out=np.zeros_like(weights), where=area > 0)
    out: FloatArray = weights.astype(np.float32)
    out.setflags(write=False)
    return out


@cache
def window() -> FloatArray:
    # Periodic Hann, scaled so a full-scale sine peaks near 0 dB.
    w = np.hanning(N_FFT + 1)[:-1]
    out: FloatArray = (w * (2.0 / w.sum())).astype(np.float32)
    out.setflags(write=False)
    return out


def n_frames(n_samples: int) -> int:
    return 0 if n_samples < N_FFT else 1 + (n_samples - N_FFT) // HOP


def log_mel(samples: npt.ArrayLike, freq_scale: float = 1.0) -> FloatArray:
    """[n_frames, N_MELS] log-mel power in dB of 8 kHz mono float samples."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples, got shape {x.shape}")
    count = n_frames(x.size)
    if count == 0:
        return np.zeros((0, N_MELS), dtype=np.float32)
    frames = sliding_window_view(x, N_FFT)[::HOP][:count] * window()
    spec = scipy.fft.rfft(frames, axis=1)
    power = spec.real**2 + spec.imag**2
    mel = power.astype(np.float32) @ mel_matrix(freq_scale)
    out: FloatArray = (10.0 * np.log10(np.maximum(mel, POWER_FLOOR))).astype(np.float32)
    return out


def log_mel_batch(excerpts: npt.ArrayLike, freq_scale: float = 1.0) -> FloatArray:
    """[batch, N_MELS, SEGMENT_FRAMES] model input from [batch, SEGMENT_SAMPLES] excerpts."""
    x = np.asarray(excerpts, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != SEGMENT_SAMPLES:
        raise ValueError(f"expected [batch, {SEGMENT_SAMPLES}] excerpts, got {x.shape}")
    frames = sliding_window_view(x, N_FFT, axis=1)[:, ::HOP][:, :SEGMENT_FRAMES] * window()
    spec = scipy.fft.rfft(frames, axis=2)
    power = (spec.real**2 + spec.imag**2).astype(np.float32)
    mel = power @ mel_matrix(freq_scale)
    db = 10.0 * np.log10(np.maximum(mel, POWER_FLOOR))
    return np.ascontiguousarray(db.transpose(0, 2, 1), dtype=np.float32)


def segment_starts(total_frames: int, hop_frames: int) -> npt.NDArray[np.int64]:
    """First frame of every whole segment at ``hop_frames`` spacing."""
    if total_frames < SEGMENT_FRAMES:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, total_frames - SEGMENT_FRAMES + 1, hop_frames, dtype=np.int64)


def segments(mel: FloatArray, starts: npt.NDArray[np.int64]) -> FloatArray:
    """[len(starts), N_MELS, SEGMENT_FRAMES] slices of a [frames, N_MELS] log-mel."""
    if starts.size == 0:
        return np.zeros((0, N_MELS, SEGMENT_FRAMES), dtype=np.float32)
    view = sliding_window_view(mel, SEGMENT_FRAMES, axis=0)  # [frames - 31, N_MELS, 32]
    return np.ascontiguousarray(view[starts], dtype=np.float32)


def frame_time_s(frame: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Start time in seconds of frame index ``frame`` (segment time = its first frame)."""
    return np.asarray(frame, dtype=np.float64) * HOP / SAMPLE_RATE_HZ
