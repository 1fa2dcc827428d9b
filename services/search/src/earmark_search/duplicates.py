"""Is a new submission the same recording as a catalog track?

The submission's own landmarks are scanned against the catalog like a long
recording. It is a duplicate of a track when that track, at one consistent
alignment, covers most of the submission's audible length — which holds for
another codec or bitrate, a trimmed or silence-padded copy and a gain change,
but not for a different recording of the same piece (its landmarks differ).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from .scanning import PostingsLookup, scan

# Share of the submission's landmark-bearing span one track must cover.
DUPLICATE_COVERAGE: Final = 0.6
# Shorter windows than a general scan: an exact copy aligns densely everywhere.
WINDOW_S: Final = 6.0
HOP_S: Final = 6.0


@dataclass(frozen=True)
class Duplicate:
    track_key: int
    coverage: float


async def find_duplicate(
    hashes: np.ndarray,
    times: np.ndarray,
    frame_rate_hz: float,
    lookup: PostingsLookup,
    *,
    ignore_track_key: int | None = None,
) -> Duplicate | None:
    if hashes.size == 0:
        return None
    t = np.asarray(times).astype(np.int64)
    # Silence padding carries no landmarks, so it does not dilute coverage.
    audible = float(t.max() - t.min()) + WINDOW_S * frame_rate_hz / 2

    async def lookup_others(h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ph, ptrack, pt = await lookup(h)
        if ignore_track_key is None:
            return ph, ptrack, pt
        keep = ptrack != ignore_track_key
        return ph[keep], ptrack[keep], pt[keep]

    timeline = await scan(
        hashes, times, frame_rate_hz, lookup_others, window_s=WINDOW_S, hop_s=HOP_S
    )
    covered: dict[int, float] = {}
    for segment in timeline.segments:
        span = segment.last_frame - segment.first_frame + WINDOW_S * frame_rate_hz / 2
        covered[segment.track_key] = covered.get(segment.track_key, 0.0) + span
    if not covered:
        return None
    track_key, span = max(covered.items(), key=lambda kv: kv[1])
    coverage = min(1.0, span / audible)
    return Duplicate(track_key, coverage) if coverage >= DUPLICATE_COVERAGE else None
