"""Audio descriptors computed with numpy.

EXTRACTOR_VERSION names this code and its parameters; a change to either must
bump it so stored rows from different extractors are never compared.
"""

from __future__ import annotations

import numpy as np

from earmark.v1 import features_pb2

EXTRACTOR_VERSION = "numpy-basic-1"
SAMPLE_RATE_HZ = 22050
FRAME = 2048
HOP = 1024


def describe(samples: np.ndarray, track_id: str) -> features_pb2.TrackFeatures:
    duration = len(samples) / SAMPLE_RATE_HZ
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    loudness = 20 * np.log10(max(rms, 1e-10))
    if samples.size >= FRAME:
        frames = np.lib.stride_tricks.sliding_window_view(samples, FRAME)[::HOP]
        spectrum = np.abs(np.fft.rfft(frames * np.hanning(FRAME), axis=1))
        freqs = np.fft.rfftfreq(FRAME, 1.0 / SAMPLE_RATE_HZ)
        energy = spectrum.sum(axis=1)
        voiced = energy > 1e-8
        centroid = (
            float(np.mean((spectrum[voiced] @ freqs) / energy[voiced])) if voiced.any() else 0.0
        )
        signs = np.signbit(frames)
        zcr = float(np.mean(signs[:, 1:] != signs[:, :-1]))
    else:
        centroid, zcr = 0.0, 0.0
    return features_pb2.TrackFeatures(
        track_id=track_id,
        extractor_version=EXTRACTOR_VERSION,
        duration_s=duration,
        loudness_dbfs=loudness,
        spectral_centroid_hz=centroid,
        zero_crossing_rate=zcr,
    )
