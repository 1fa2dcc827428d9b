"""One Identify of made-up fingerprints before the service reports SERVING.

A fresh process pays once for its first lookup (prepared statements, cold
pages), its first Milvus search and the first runs of the vote and rescue
code: about 0.3 s that the first caller after a start or a rollout would
otherwise wait. The answer is thrown away; a failure is logged, not fatal
(the dependencies' health checks decide whether the service is ready).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from earmark.v1 import common_pb2, search_pb2

from .catalog import Catalog
from .identify import NeuralQuery, ScaledQuery, identify
from .vector_matching import QueryView
from .vectors import SegmentStore

log = logging.getLogger(__name__)

FRAME_RATE_HZ = 31.25  # the landmark fingerprinter's
CLIP_S = 5.0
LANDMARKS_PER_S = 330  # a 4-shift query's density
SCALES = (0.95, 0.98, 1.02, 1.05)


def _landmarks(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = int(CLIP_S * LANDMARKS_PER_S)
    hashes = rng.integers(0, 1 << 23, n).astype(np.uint32)
    times = np.sort(rng.integers(0, int(CLIP_S * FRAME_RATE_HZ), n)).astype(np.uint32)
    return hashes, times


def _unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    unit: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return unit


async def warm_up(catalog: Catalog, segments: SegmentStore | None) -> bool:
    """True when the made-up Identify ran through (it writes nothing)."""
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    hashes, times = _landmarks(rng)
    fingerprint = common_pb2.LandmarkFingerprint(
        frame_rate_hz=FRAME_RATE_HZ,
        hashes=hashes.tobytes(),
        times=times.tobytes(),
        duration_s=CLIP_S,
    )
    starts = np.arange(0.0, CLIP_S - 1.0, 0.25)

    async def rescaled() -> list[ScaledQuery]:
        return [ScaledQuery(scale, *_landmarks(rng)) for scale in SCALES]

    async def views() -> list[QueryView]:
        assert segments is not None
        return [
            QueryView(scale, starts, _unit_vectors(rng, starts.size, segments.dim))
            for scale in SCALES
        ]

    neural = None
    if segments is not None:
        neural = NeuralQuery(times_s=starts, vectors=_unit_vectors(rng, starts.size, segments.dim))
    try:
        await identify(
            catalog,
            fingerprint,
            1,
            neural=neural,
            rescaled=rescaled,
            neural_rescaled=views if segments is not None else None,
            vector_search=segments.search if segments is not None else None,
            vector_has_track=segments.has_track if segments is not None else None,
            method=search_pb2.IDENTIFY_METHOD_FUSED,
        )
    except Exception:  # a cold first call is not worth failing a start
        log.warning("warm-up Identify failed; the first real one will be slower", exc_info=True)
        return False
    log.info("warmed up in %.2f s", time.perf_counter() - started)
    return True
