"""Jobs for the essentia worker-pool tests; a module of its own so that spawned
workers import only this, not essentia."""

from __future__ import annotations

import os
import time

import numpy as np

from earmark.v1 import features_pb2


def hang_die_or_answer(samples: np.ndarray, track_id: str) -> features_pb2.TrackFeatures:
    if track_id == "hang":
        time.sleep(3600)
    if track_id == "die":
        os._exit(3)
    # The worker's pid rides in the answer, so a test can see which process ran it.
    return features_pb2.TrackFeatures(track_id=f"{track_id}:{os.getpid()}")
