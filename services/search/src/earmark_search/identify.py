"""Identification: clip landmarks -> postings -> offset vote -> ranked tracks."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from earmark.v1 import common_pb2, search_pb2

from .catalog import Catalog
from .matching import MatchCandidate, rank_matches
from .scanning import MIN_DISTINCT_TIMES, Postings, aligned_times, scan


def _confident_matches(
    hashes: np.ndarray, times: np.ndarray, postings: Postings, max_matches: int
) -> list[MatchCandidate]:
    """Ranked matches whose votes come from enough distinct moments of the clip."""
    ranked = rank_matches(hashes, times, *postings, max_matches=max_matches)
    q_hashes, q_times = hashes.astype(np.int64), times.astype(np.int64)
    return [
        m
        for m in ranked
        if aligned_times(q_hashes, q_times, postings, m.track_key, m.offset_frames).size
        >= MIN_DISTINCT_TIMES
    ]


async def identify(
    catalog: Catalog, landmarks: common_pb2.LandmarkFingerprint, max_matches: int
) -> search_pb2.IdentifyResponse:
    hashes = np.frombuffer(landmarks.hashes, dtype="<u4")
    times = np.frombuffer(landmarks.times, dtype="<u4").astype(np.int64)
    response = search_pb2.IdentifyResponse(
        query_duration_s=landmarks.duration_s, query_landmarks=len(hashes)
    )
    if hashes.size == 0:
        return response
    started = time.perf_counter()
    postings = await catalog.postings(hashes)
    looked_up = time.perf_counter()
    ranked = await asyncio.to_thread(_confident_matches, hashes, times, postings, max_matches)
    response.timings.lookup_ms = (looked_up - started) * 1000
    response.timings.match_ms = (time.perf_counter() - looked_up) * 1000
    response.postings = len(postings[0])
    if not ranked:
        return response
    tracks = await catalog.tracks_by_key([m.track_key for m in ranked])
    frame_s = 1.0 / landmarks.frame_rate_hz if landmarks.frame_rate_hz else 0.0
    for match in ranked:
        track = tracks.get(match.track_key)
        if track is None:  # deleted between the lookup and now
            continue
        response.matches.append(
            search_pb2.Match(
                track=track.to_proto(),
                offset_s=match.offset_frames * frame_s,
                score=float(match.score),
                confidence=match.confidence,
            )
        )
    return response


async def scan_recording(
    catalog: Catalog, landmarks: common_pb2.LandmarkFingerprint, window_s: float, hop_s: float
) -> search_pb2.ScanResponse:
    hashes = np.frombuffer(landmarks.hashes, dtype="<u4")
    times = np.frombuffer(landmarks.times, dtype="<u4")
    timeline = await scan(
        hashes, times, landmarks.frame_rate_hz, catalog.postings, window_s=window_s, hop_s=hop_s
    )
    response = search_pb2.ScanResponse(duration_s=landmarks.duration_s)
    tracks = await catalog.tracks_by_key([s.track_key for s in timeline.segments])
    frame_s = 1.0 / landmarks.frame_rate_hz
    for segment in timeline.segments:
        track = tracks.get(segment.track_key)
        if track is None:
            continue
        response.entries.append(
            search_pb2.TimelineEntry(
                track=track.to_proto(),
                start_s=segment.first_frame * frame_s,
                end_s=segment.last_frame * frame_s,
                track_offset_s=(segment.first_frame + segment.alignment) * frame_s,
                confidence=segment.confidence,
                score=float(segment.score),
            )
        )
    return response
