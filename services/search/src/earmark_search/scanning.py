"""Scanning a long recording: which catalog tracks play, and when.

The recording's landmarks are cut into overlapping windows; each window is
matched on its own (`rank_matches`), and the query landmarks that voted for
the winning alignment give exact first/last times. Consecutive windows that
agree on the track and on the alignment (recording time - track time, so a
track played through keeps one alignment) merge into one timeline entry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from .matching import MatchCandidate, join_postings, rank_matches

Postings = tuple[np.ndarray, np.ndarray, np.ndarray]
PostingsLookup = Callable[[np.ndarray], Awaitable[Postings]]

# Alignments within this many frames (0.3 s at 31.25 fps) are the same playback.
ALIGNMENT_TOLERANCE_FRAMES: Final = 10
# Votes from one anchor peak share its time; a real match has votes spread over
# many distinct times, one chance peak coincidence does not.
MIN_DISTINCT_TIMES: Final = 8
# A track may drop out for this long (a breakdown, a talk-over) and continue.
MAX_GAP_S: Final = 12.0


@dataclass
class Segment:
    track_key: int
    alignment: int  # track time - recording time, frames
    first_frame: int
    last_frame: int
    score: int = 0
    confidence: float = 0.0
    windows: int = 0

    def absorbs(self, track_key: int, alignment: int, first: int, max_gap: int) -> bool:
        return (
            track_key == self.track_key
            and abs(alignment - self.alignment) <= ALIGNMENT_TOLERANCE_FRAMES
            and first - self.last_frame <= max_gap
        )


@dataclass
class Timeline:
    frame_rate_hz: float
    segments: list[Segment] = field(default_factory=list)


def aligned_times(
    q_hashes: npt.NDArray[np.int64],
    q_times: npt.NDArray[np.int64],
    postings: Postings,
    track_key: int,
    offset: int,
    tolerance: int = 1,
) -> npt.NDArray[np.int64]:
    """Recording times of the query landmarks that vote for (track, offset)."""
    ph, ptrack, pt = postings
    keep = ptrack == track_key
    pairs = join_postings(q_hashes, q_times, ph[keep].astype(np.int64), ptrack[keep], pt[keep])
    if pairs is None:
        return np.empty(0, dtype=np.int64)
    _tracks, offsets, q_idx = pairs
    hit = np.abs(offsets - offset) <= tolerance
    return np.unique(q_times[q_idx[hit]])


def window_matches(
    wh: npt.NDArray[np.int64], wt: npt.NDArray[np.int64], postings: Postings
) -> list[tuple[int, int, int, float]]:
    """Tracks heard in one window: (track, offset, score, confidence).

    Usually one track passes the full test. A window across a transition holds
    two real tracks, and each would fail the runner-up ratio against the other;
    then the two strongest candidates are each confirmed alone (the landmarks
    voting for the other removed, it must pass the full test), and both must
    confirm, since random music rarely yields two independent confirmations.
    """
    single = rank_matches(wh, wt, *postings, max_matches=1)
    if single:
        return [(c.track_key, c.offset_frames, c.score, c.confidence) for c in single]
    candidates = rank_matches(wh, wt, *postings, max_matches=2, min_ratio=1.0)
    if len(candidates) < 2:
        return []
    out = []
    for me, other in ((candidates[0], candidates[1]), (candidates[1], candidates[0])):
        keep = ~_votes_for(wh, wt, postings, other) | _votes_for(wh, wt, postings, me)
        ranked = rank_matches(wh[keep], wt[keep], *postings, max_matches=1)
        if not ranked or ranked[0].track_key != me.track_key:
            return []
        out.append((me.track_key, me.offset_frames, ranked[0].score, ranked[0].confidence))
    return out


def _votes_for(
    wh: npt.NDArray[np.int64], wt: npt.NDArray[np.int64], postings: Postings, cand: MatchCandidate
) -> npt.NDArray[np.bool_]:
    return np.isin(wt, aligned_times(wh, wt, postings, cand.track_key, cand.offset_frames))


async def scan(
    hashes: np.ndarray,
    times: np.ndarray,
    frame_rate_hz: float,
    lookup: PostingsLookup,
    *,
    window_s: float = 10.0,
    hop_s: float = 5.0,
) -> Timeline:
    """Timeline of catalog tracks in a recording's landmarks, in order of first frame."""
    q_hashes = np.asarray(hashes).astype(np.int64)
    q_times = np.asarray(times).astype(np.int64)
    timeline = Timeline(frame_rate_hz=frame_rate_hz)
    if q_hashes.size == 0:
        return timeline
    window = max(1, round(window_s * frame_rate_hz))
    hop = max(1, round(hop_s * frame_rate_hz))
    max_gap = round(MAX_GAP_S * frame_rate_hz)
    order = np.argsort(q_times, kind="stable")
    q_hashes, q_times = q_hashes[order], q_times[order]
    open_segments: list[Segment] = []
    last_frame = int(q_times[-1])
    for start in range(0, max(last_frame - window // 2, 0) + 1, hop):
        lo, hi = np.searchsorted(q_times, [start, start + window])
        if hi - lo < 10:
            continue
        wh, wt = q_hashes[lo:hi], q_times[lo:hi]
        postings = await lookup(wh)
        for track_key, offset, score, confidence in window_matches(wh, wt, postings):
            voted = aligned_times(wh, wt, postings, track_key, offset)
            if voted.size < MIN_DISTINCT_TIMES:
                continue
            first, last = int(voted[0]), int(voted[-1])
            segment = next(
                (
                    s
                    for s in reversed(open_segments)
                    if s.absorbs(track_key, offset, first, max_gap)
                ),
                None,
            )
            if segment is None:
                segment = Segment(track_key, offset, first, last)
                open_segments.append(segment)
            segment.first_frame = min(segment.first_frame, first)
            segment.last_frame = max(segment.last_frame, last)
            segment.score = max(segment.score, score)
            segment.confidence = max(segment.confidence, confidence)
            segment.windows += 1
    timeline.segments = sorted(open_segments, key=lambda s: s.first_frame)
    return timeline
