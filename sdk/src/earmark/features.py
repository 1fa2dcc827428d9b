"""Descriptors and "more like this": a small client for the features service.

>>> from earmark.features import FeaturesClient
>>> with FeaturesClient() as fc:
...     print(fc.get(track_id).rhythm.bpm)
...     for hit in fc.similar(track_id, k=10, min_bpm=100, max_bpm=130):
...         print(hit.track_id, hit.score, hit.why)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

from earmark.v1 import features_pb2, features_pb2_grpc

from . import _auth
from ._requests import AudioSource, audio_input, read_audio
from .discovery import resolve


@dataclass(frozen=True)
class Reason:
    feature: str
    similarity: float
    detail: str


@dataclass(frozen=True)
class SimilarTrack:
    track_id: str
    score: float
    bpm: float
    key: str
    scale: str
    integrated_lufs: float
    reasons: list[Reason] = field(default_factory=list)

    @property
    def why(self) -> str:
        """The closest features, e.g. "timbre 0.97; rhythm 0.91 (120.0 vs 121.0 BPM)"."""
        return "; ".join(
            f"{r.feature} {r.similarity:.2f}" + (f" ({r.detail})" if r.detail else "")
            for r in self.reasons
        )

    @classmethod
    def from_proto(cls, t: features_pb2.SimilarTrack) -> SimilarTrack:
        return cls(
            track_id=t.track_id,
            score=t.score,
            bpm=t.bpm,
            key=t.key,
            scale=t.scale,
            integrated_lufs=t.integrated_lufs,
            reasons=[Reason(r.feature, r.similarity, r.detail) for r in t.reasons],
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def similar_filter(
    *, min_bpm: float = 0.0, max_bpm: float = 0.0, key: str = "", scale: str = ""
) -> features_pb2.SimilarFilter | None:
    if not (min_bpm or max_bpm or key or scale):
        return None
    return features_pb2.SimilarFilter(min_bpm=min_bpm, max_bpm=max_bpm, key=key, scale=scale)


def feature_rows(f: features_pb2.TrackFeatures) -> list[tuple[str, str]]:
    """(descriptor, value) rows for printing a track's descriptors."""
    r, t, lo, s = f.rhythm, f.tonality, f.loudness, f.spectral
    bpm = f"{r.bpm:.1f} (confidence {r.bpm_confidence:.2f})"
    if r.octave_ambiguous:
        bpm += f", or {r.bpm_alternative:.1f}"

    def vec(values: Sequence[float]) -> str:
        return " ".join(f"{v:.1f}" for v in values)

    return [
        ("track", f.track_id),
        ("extractor", f"{f.extractor_version} (schema {f.schema_version})"),
        ("duration", f"{f.duration_s:.1f} s"),
        ("bpm", bpm),
        ("key", f"{t.key} {t.scale} (strength {t.strength:.2f}, {t.profile} profile)"),
        ("loudness", f"{lo.integrated_lufs:.1f} LUFS, range {lo.range_lu:.1f} LU"),
        ("rms level", f"{f.loudness_dbfs:.1f} dBFS"),
        ("danceability", f"{r.danceability:.2f}"),
        ("dynamic complexity", f"{r.dynamic_complexity:.2f} dB"),
        ("onset rate", f"{r.onset_rate_hz:.2f} /s"),
        ("spectral centroid", f"{s.centroid_hz.mean:.0f} ± {s.centroid_hz.stdev:.0f} Hz"),
        ("spectral rolloff", f"{s.rolloff_hz.mean:.0f} ± {s.rolloff_hz.stdev:.0f} Hz"),
        ("spectral flatness", f"{s.flatness.mean:.3f} ± {s.flatness.stdev:.3f}"),
        ("mfcc mean", vec(s.mfcc_mean)),
        ("chroma (C..B)", " ".join(f"{v:.2f}" for v in t.hpcp_mean)),
    ]


class FeaturesClient:
    """Synchronous client of FeaturesService. The address defaults like `Earmark`'s."""

    def __init__(
        self,
        addr: str | None = None,
        *,
        channel: grpc.Channel | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self._own = channel is None
        if channel is None:
            raw, stub_channel = _auth.sync_channel(
                resolve(features=addr).features, _auth.api_key(None)
            )
        else:
            raw = stub_channel = channel
        self._channel = raw
        self._stub = features_pb2_grpc.FeaturesServiceStub(stub_channel)
        self._timeout = timeout_s

    def close(self) -> None:
        if self._own:
            self._channel.close()

    def __enter__(self) -> FeaturesClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def get(self, track_id: str) -> features_pb2.TrackFeatures:
        reply = self._stub.GetFeatures(
            features_pb2.GetFeaturesRequest(track_id=track_id), timeout=self._timeout
        )
        features: features_pb2.TrackFeatures = reply.features
        return features

    def similar(
        self,
        track_id: str,
        k: int = 10,
        *,
        min_bpm: float = 0.0,
        max_bpm: float = 0.0,
        key: str = "",
        scale: str = "",
    ) -> list[SimilarTrack]:
        reply = self._stub.Similar(
            features_pb2.SimilarRequest(
                track_id=track_id,
                k=k,
                filter=similar_filter(min_bpm=min_bpm, max_bpm=max_bpm, key=key, scale=scale),
            ),
            timeout=self._timeout,
        )
        return [SimilarTrack.from_proto(t) for t in reply.results]

    def similar_to_audio(
        self,
        clip: AudioSource,
        k: int = 10,
        *,
        min_bpm: float = 0.0,
        max_bpm: float = 0.0,
        key: str = "",
        scale: str = "",
    ) -> tuple[features_pb2.TrackFeatures, list[SimilarTrack]]:
        """The clip's own descriptors and its nearest catalog tracks."""
        reply = self._stub.SimilarToAudio(
            features_pb2.SimilarToAudioRequest(
                audio=audio_input(read_audio(clip)),
                k=k,
                filter=similar_filter(min_bpm=min_bpm, max_bpm=max_bpm, key=key, scale=scale),
            ),
            timeout=self._timeout,
        )
        return reply.query, [SimilarTrack.from_proto(t) for t in reply.results]
