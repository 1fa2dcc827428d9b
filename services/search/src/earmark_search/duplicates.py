"""Is a new submission the same recording as a catalog track?

A bounded sample of windows spread over the submission is matched against the
catalog, with one postings lookup for all of them. The submission duplicates a
track when most windows that carry landmarks land on that track at one
consistent alignment (recording time - track time) — true for another codec
or bitrate, a trimmed or silence-padded copy and a gain change, but not for a
different recording of the same piece, whose landmarks differ. The cost is
the same for a 3-minute song and a 2-hour mix.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Final

import numpy as np

from .matching import rank_matches
from .scanning import MIN_DISTINCT_TIMES, PostingsLookup, aligned_times

# Share of the sampled windows one track must explain at one alignment.
DUPLICATE_COVERAGE: Final = 0.6
WINDOW_S: Final = 6.0
MAX_WINDOWS: Final = 24
# Windows with fewer landmarks than this (silence, padding) are not sampled.
MIN_WINDOW_LANDMARKS: Final = 20
# Alignments within this many frames (0.3 s) are the same placement.
ALIGNMENT_TOLERANCE: Final = 10


@dataclass(frozen=True)
class Duplicate:
    track_key: int
    coverage: float


def _windows(times: np.ndarray, window: int) -> list[tuple[int, int]]:
    """Index ranges of up to MAX_WINDOWS evenly spread windows that carry landmarks."""
    first, last = int(times[0]), int(times[-1])
    starts = np.arange(first, max(first, last - window) + 1, window)
    if starts.size > MAX_WINDOWS:
        starts = starts[np.linspace(0, starts.size - 1, MAX_WINDOWS).round().astype(int)]
    ranges = []
    for start in starts:
        lo, hi = np.searchsorted(times, [start, start + window])
        if hi - lo >= MIN_WINDOW_LANDMARKS:
            ranges.append((int(lo), int(hi)))
    return ranges


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
    order = np.argsort(times, kind="stable")
    h = np.asarray(hashes)[order].astype(np.int64)
    t = np.asarray(times)[order].astype(np.int64)
    windows = _windows(t, max(1, round(WINDOW_S * frame_rate_hz)))
    if not windows:
        return None
    sampled = np.concatenate([h[lo:hi] for lo, hi in windows])
    ph, ptrack, pt = await lookup(np.unique(sampled))
    if ignore_track_key is not None:
        keep = ptrack != ignore_track_key
        ph, ptrack, pt = ph[keep], ptrack[keep], pt[keep]
    votes: Counter[tuple[int, int]] = Counter()
    for lo, hi in windows:
        wh, wt = h[lo:hi], t[lo:hi]
        ranked = rank_matches(wh, wt, ph, ptrack, pt, max_matches=1)
        if ranked:
            best = ranked[0]
            voted = aligned_times(wh, wt, (ph, ptrack, pt), best.track_key, best.offset_frames)
            if voted.size < MIN_DISTINCT_TIMES:
                continue
            # Bucket alignments so small jitter between windows still agrees.
            votes[(best.track_key, round(best.offset_frames / ALIGNMENT_TOLERANCE))] += 1
    if not votes:
        return None
    # Neighbouring buckets are one placement split by rounding.
    best_key, _count = votes.most_common(1)[0]
    track_key, bucket = best_key
    agreeing = sum(votes.get((track_key, bucket + d), 0) for d in (-1, 0, 1))
    coverage = agreeing / len(windows)
    return Duplicate(track_key, coverage) if coverage >= DUPLICATE_COVERAGE else None
