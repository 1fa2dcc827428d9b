"""The similarity vector: descriptor groups, standardised, weighted, unit length.

Each group is standardised with fixed constants (below; physical scales, not
fitted to any catalog, so a vector never changes once stored), scaled to unit
length, multiplied by sqrt(weight) and concatenated; the whole vector is then
unit length, so Milvus' inner product is a cosine similarity in which every
group contributes in proportion to its weight. SIMILARITY_VERSION must change
with any constant here; the index refuses vectors of another version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from earmark.v1 import features_pb2

SIMILARITY_VERSION = "sim-1"

# MFCC c1..c12 (c0 is overall level, left to the loudness group): essentia's
# dB-amplitude MFCCs spread by tens of units in c1 and less above.
_MFCC_CENTER = np.array([0.0] * 12)
_MFCC_SCALE = np.array([40.0, 20.0, 15.0, 12.0, 10.0, 10.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0])
_MFCC_STD_CENTER = np.array([15.0, 10.0, 9.0, 8.0, 7.0, 7.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0])
_MFCC_STD_SCALE = _MFCC_STD_CENTER / 2

# (group, weight). Timbre dominates, as in most content-based recommenders;
# tempo and key shape the rest.
WEIGHTS: dict[str, float] = {
    "timbre": 4.0,
    "spectrum": 2.0,
    "harmony": 1.0,
    "rhythm": 1.5,
    "loudness": 1.0,
}


def _log2_ratio(value: float, reference: float, floor: float = 1e-6) -> float:
    return math.log2(max(value, floor) / reference)


def groups(f: features_pb2.TrackFeatures) -> dict[str, np.ndarray]:
    """The standardised (not yet unit-length) sub-vectors of each group."""
    s, r, t, lo = f.spectral, f.rhythm, f.tonality, f.loudness
    mfcc_mean = np.array(list(s.mfcc_mean)[1:13] or [0.0] * 12)
    mfcc_std = np.array(list(s.mfcc_stdev)[1:13] or [0.0] * 12)
    timbre = np.concatenate(
        [(mfcc_mean - _MFCC_CENTER) / _MFCC_SCALE, (mfcc_std - _MFCC_STD_CENTER) / _MFCC_STD_SCALE]
    )
    spectrum = np.array(
        [
            _log2_ratio(s.centroid_hz.mean, 1500.0),
            _log2_ratio(s.centroid_hz.stdev, 700.0),
            _log2_ratio(s.rolloff_hz.mean, 3500.0),
            _log2_ratio(s.rolloff_hz.stdev, 2000.0),
            (s.flatness.mean - 0.1) / 0.1,
            (s.flatness.stdev - 0.08) / 0.08,
            (f.zero_crossing_rate - 0.05) / 0.04,
        ]
    )
    hpcp = np.array(list(t.hpcp_mean) or [0.0] * 12)
    hpcp = hpcp - hpcp.mean()
    harmony = hpcp / 0.2
    # Tempo on a log scale, folded so that 2x errors do not separate tracks.
    tempo_angle = 2 * math.pi * _log2_ratio(r.bpm, 120.0, floor=1.0) if r.bpm > 0 else 0.0
    rhythm = np.array(
        [
            math.cos(tempo_angle) * min(r.bpm_confidence / 3.0, 1.0),
            math.sin(tempo_angle) * min(r.bpm_confidence / 3.0, 1.0),
            (r.danceability - 1.1) / 0.3,
            _log2_ratio(r.onset_rate_hz, 3.0, floor=0.1),
            (r.dynamic_complexity - 4.0) / 2.5,
        ]
    )
    integrated = lo.integrated_lufs if lo.integrated_lufs > -70 else -70.0
    loudness = np.array([(integrated + 18.0) / 6.0, (lo.range_lu - 8.0) / 5.0])
    return {
        "timbre": timbre,
        "spectrum": spectrum,
        "harmony": harmony,
        "rhythm": rhythm,
        "loudness": loudness,
    }


GROUP_DIMS = {"timbre": 24, "spectrum": 7, "harmony": 12, "rhythm": 5, "loudness": 2}
DIM = sum(GROUP_DIMS.values())


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 1e-12 else v


def vector(f: features_pb2.TrackFeatures) -> np.ndarray:
    parts = groups(f)
    out = np.concatenate([_unit(parts[g]) * math.sqrt(WEIGHTS[g]) for g in GROUP_DIMS])
    return _unit(out).astype(np.float32)


def split(v: np.ndarray) -> dict[str, np.ndarray]:
    """The group sub-vectors of a stored vector."""
    out, at = {}, 0
    for g, dim in GROUP_DIMS.items():
        out[g] = v[at : at + dim]
        at += dim
    return out


@dataclass(frozen=True)
class Neighbour:
    """What the index holds about a track besides its vector."""

    bpm: float
    key: str
    scale: str
    integrated_lufs: float
    centroid_hz: float


def explain(
    query_vec: np.ndarray,
    query: Neighbour,
    cand_vec: np.ndarray,
    cand: Neighbour,
    top: int = 3,
) -> list[features_pb2.FeatureReason]:
    """The descriptor groups in which the candidate is closest to the query."""
    q, c = split(query_vec), split(cand_vec)
    details = {
        "timbre": "MFCC mean and spread",
        "spectrum": f"brightness {query.centroid_hz:.0f} vs {cand.centroid_hz:.0f} Hz centroid",
        "harmony": f"chroma; key {query.key} {query.scale} vs {cand.key} {cand.scale}",
        "rhythm": f"{query.bpm:.1f} vs {cand.bpm:.1f} BPM",
        "loudness": f"{query.integrated_lufs:.1f} vs {cand.integrated_lufs:.1f} LUFS",
    }
    reasons = []
    for g in GROUP_DIMS:
        qn, cn = float(np.linalg.norm(q[g])), float(np.linalg.norm(c[g]))
        sim = float(q[g] @ c[g] / (qn * cn)) if qn > 1e-9 and cn > 1e-9 else 0.0
        reasons.append(features_pb2.FeatureReason(feature=g, similarity=sim, detail=details[g]))
    reasons.sort(key=lambda r: -r.similarity)
    out = reasons[:top]
    if query.key and query.key == cand.key and query.scale == cand.scale:
        out.append(
            features_pb2.FeatureReason(
                feature="key", similarity=1.0, detail=f"same key, {cand.key} {cand.scale}"
            )
        )
    return out
