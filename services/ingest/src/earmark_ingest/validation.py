"""Checks on an upload's decoded audio, before anything is stored for good."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from earmark.v1 import common_pb2
from earmark_runtime.audio import DecodedAudio

from .music_check import classify, clipping_ratio
from .tags import TrackTags, missing_fields

# Below this RMS level (-60 dBFS) a file holds nothing worth fingerprinting.
SILENCE_RMS = 10 ** (-60 / 20)


@dataclass(frozen=True)
class Refusal:
    code: int
    message: str

    @property
    def code_name(self) -> str:
        return str(common_pb2.RejectionCode.Name(self.code))  # type: ignore[arg-type]


def check_audio(
    audio: DecodedAudio, *, min_duration_s: float, max_duration_s: float
) -> Refusal | None:
    duration = audio.duration_s
    if duration > max_duration_s:
        return Refusal(
            common_pb2.REJECTION_CODE_TOO_LONG,
            f"audio is longer than the {max_duration_s:.0f} s limit",
        )
    if duration < min_duration_s or audio.samples.size == 0:
        return Refusal(
            common_pb2.REJECTION_CODE_TOO_SHORT,
            f"audio lasts {duration:.2f} s; at least {min_duration_s:.1f} s is required",
        )
    rms = float(np.sqrt(np.mean(np.square(audio.samples, dtype=np.float64))))
    if rms < SILENCE_RMS:
        level = 20 * np.log10(max(rms, 1e-12))
        return Refusal(common_pb2.REJECTION_CODE_SILENT, f"audio is silent (RMS {level:.0f} dBFS)")
    return None


def check_content(audio: DecodedAudio, *, max_clipping: float, music_check: bool) -> Refusal | None:
    """Clipping and the music-versus-mock classifier (music_check.py)."""
    ratio = clipping_ratio(audio.samples)
    if ratio > max_clipping:
        return Refusal(
            common_pb2.REJECTION_CODE_CLIPPED,
            f"{ratio:.0%} of the samples are at full scale (limit {max_clipping:.0%})",
        )
    if music_check:
        verdict = classify(audio.samples, audio.sample_rate_hz)
        if not verdict.is_music:
            return Refusal(common_pb2.REJECTION_CODE_NOT_MUSIC, verdict.reason)
    return None


def check_tags(metadata: TrackTags, required: tuple[str, ...]) -> Refusal | None:
    missing = missing_fields(metadata, required)
    if missing:
        return Refusal(
            common_pb2.REJECTION_CODE_MISSING_METADATA,
            f"missing required tags: {', '.join(missing)} (set them in the file or the request)",
        )
    return None
