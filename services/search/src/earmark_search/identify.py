"""Identification: clip landmarks -> postings -> offset vote -> ranked tracks."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Final

import numpy as np

from earmark.v1 import common_pb2, search_pb2

from . import fusion
from .catalog import Catalog
from .matching import (
    DEFAULT_MIN_ALIGNED,
    DEFAULT_MIN_RATIO,
    MatchCandidate,
    rank_matches,
)
from .scanning import MIN_DISTINCT_TIMES, Postings, aligned_times, scan
from .vector_matching import DEFAULT_K, Hit, QueryView, rank_tracks, rank_views
from .verification import check_alignment

# A clip with many landmarks (busy music, or longer than ~2 s) gives chance a
# better shot: a held-out track of the same game (same samples, same tempo) can
# line up 10-25 of them at one offset, 2-2.5x the next track. Such clips must
# beat their runner-up by more; short clips keep the lower ratio, which their
# true matches need (docs/landmarks.md, "Decision on the corpus").
LONG_CLIP_LANDMARKS: Final = 800
LONG_CLIP_MIN_RATIO: Final = 2.5
# A clip that matches nothing as it is gets a second chance at a dozen frequency
# scales (sped up, slowed down, pitch-shifted). Each scale is another chance for
# a chance alignment to pass, so the rescue asks for more evidence than a plain
# match (chosen with earmark_training.landmark_decision, docs/landmarks.md).
RESCUE_MIN_ALIGNED: Final = 20
RESCUE_MIN_RATIO: Final = 3.0
# Clips with fewer landmarks than this rarely reach RESCUE_MIN_ALIGNED: each
# rescaled variant of a short clip is extracted at two sub-hop shifts instead of
# four, so it has about half the plain clip's landmarks (a clip of 4.5 s or more
# gets one shift and a quarter of them, hundreds: landmarks.rescue_shifts).
RESCUE_MIN_LANDMARKS: Final = 2 * RESCUE_MIN_ALIGNED
# The rescue looks up a dozen scales' hashes (~8 k for a 5 s clip): read in
# two hash ranges at once, PostgreSQL answers on two cores.
RESCUE_LOOKUP_PARTS: Final = 2
# Postings read per distinct query hash, on average, at most, at first: only the
# rarest hashes are read (Catalog.rarest_postings). It keeps a lookup's cost flat
# as the catalog grows (bench/scale.py); small catalogs hardly reach it. A clip
# that matches nothing within it is looked up again with a larger budget (a
# noisy clip's surviving hashes may be common ones), not in full: at 1,000 h a
# full read is ~870 k postings, and every out-of-catalog clip would pay it.
POSTINGS_PER_QUERY_HASH: Final = 32
RETRY_POSTINGS_PER_QUERY_HASH: Final = 256
# A vote's best candidate that the rules above reject (too few votes, too few
# distinct clip times, or a long clip below 2.5x) is looked at peak by peak
# (verification.py) if it has 9 votes at 2x its runner-up; it is accepted when
# the clip's peaks line up with the track's 2.5 times better at the voted
# alignment than at any other. Noise and reverb thin landmarks (pairs of peaks)
# quadratically and peaks only linearly, so this recovers true matches whose
# votes alone look like chance: 1 s clips above all (chosen with
# earmark_training.landmark_decision, docs/landmarks.md "Peak verification").
VERIFY_MIN_ALIGNED: Final = 9
VERIFY_MIN_RATIO: Final = 2.0
VERIFY_PEAK_RATIO: Final = 2.5
# The peaks are the confirmation a weak landmark match would otherwise need
# from the neural index (fusion.UNCONFIRMED_MIN).
VERIFIED_MIN_CONFIDENCE: Final = fusion.UNCONFIRMED_MIN


def postings_budget(hashes: np.ndarray, per_hash: int = POSTINGS_PER_QUERY_HASH) -> int:
    return per_hash * int(np.unique(hashes).size)


def plain_min_ratio(landmark_count: int) -> float:
    """Score-to-runner-up ratio a plain (not rescued) match must reach."""
    return LONG_CLIP_MIN_RATIO if landmark_count >= LONG_CLIP_LANDMARKS else DEFAULT_MIN_RATIO


@dataclass(frozen=True)
class ScaledQuery:
    """A clip's landmarks as if its frequencies were divided by `frequency_scale`."""

    frequency_scale: float
    hashes: np.ndarray
    times: np.ndarray
    # The clip's peaks at this scale, to verify a weak candidate (empty: not verified).
    peak_times: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    peak_bins: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))


# One vote serves every rule below: each rule is stricter than these, and a
# ranking does not depend on the thresholds, only where its list is cut.
_LOOSEST_ALIGNED: Final = min(DEFAULT_MIN_ALIGNED, VERIFY_MIN_ALIGNED, RESCUE_MIN_ALIGNED)
_LOOSEST_RATIO: Final = min(DEFAULT_MIN_RATIO, VERIFY_MIN_RATIO, RESCUE_MIN_RATIO)


@dataclass(frozen=True)
class Vote:
    """One clip's (or one scale's) ranked candidates at the loosest thresholds."""

    hashes: np.ndarray  # int64
    times: np.ndarray  # int64
    ranked: list[MatchCandidate]

    def confident(
        self, postings: Postings, min_aligned: int, min_ratio: float
    ) -> list[MatchCandidate]:
        """The matches a rule accepts, voted for by enough distinct moments of the clip.

        `rank_matches` with these thresholds would stop at the first candidate
        that fails them; the vote's runner-ups do not depend on thresholds.
        """
        passing = list(
            itertools.takewhile(lambda m: _passes(m, min_aligned, min_ratio), self.ranked)
        )
        return [
            m
            for m in passing
            if aligned_times(self.hashes, self.times, postings, m.track_key, m.offset_frames).size
            >= MIN_DISTINCT_TIMES
        ]

    def verification_candidate(self) -> MatchCandidate | None:
        """The best candidate if it is worth checking peak by peak."""
        best = self.ranked[0] if self.ranked else None
        if best is None or not _passes(best, VERIFY_MIN_ALIGNED, VERIFY_MIN_RATIO):
            return None
        return best


def _passes(match: MatchCandidate, min_aligned: int, min_ratio: float) -> bool:
    """What `rank_matches` asks of a candidate at these thresholds."""
    return match.score >= min_aligned and match.score >= min_ratio * match.runner_up


def vote(
    hashes: np.ndarray,
    times: np.ndarray,
    postings: Postings,
    max_matches: int,
    *,
    postings_sorted: bool = False,
) -> Vote:
    q_hashes, q_times = hashes.astype(np.int64), times.astype(np.int64)
    ranked = rank_matches(
        q_hashes,
        q_times,
        *postings,
        max_matches=max_matches,
        min_aligned=_LOOSEST_ALIGNED,
        min_ratio=_LOOSEST_RATIO,
        postings_sorted=postings_sorted,
    )
    return Vote(q_hashes, q_times, ranked)


def plain_decision(
    hashes: np.ndarray,
    times: np.ndarray,
    postings: Postings,
    max_matches: int,
    min_ratio: float,
) -> tuple[Vote, list[MatchCandidate]]:
    """The clip's vote, and the matches the plain rule accepts from it."""
    plain = vote(hashes, times, postings, max_matches)
    return plain, plain.confident(postings, DEFAULT_MIN_ALIGNED, min_ratio)


async def verified_match(
    catalog: Catalog,
    candidate: MatchCandidate,
    peak_times: np.ndarray,
    peak_bins: np.ndarray,
    min_confidence: float = VERIFIED_MIN_CONFIDENCE,
) -> MatchCandidate | None:
    """`candidate` if the clip's peaks confirm it, with at least `min_confidence`."""
    track_peaks = await catalog.track_peaks(candidate.track_key)
    check = check_alignment(peak_times, peak_bins, track_peaks, candidate.offset_frames)
    if not check.passes(VERIFY_PEAK_RATIO):
        return None
    return replace(candidate, confidence=max(candidate.confidence, min_confidence))


@dataclass(frozen=True)
class RescueVote:
    """The rescue's outcome before any peak is looked at."""

    scale: float  # 1.0 when no scale passes
    matches: list[MatchCandidate]
    # When none passes: the scale whose candidate has the most votes, to verify.
    candidate: tuple[ScaledQuery, MatchCandidate] | None = None


def vote_rescue(queries: Sequence[ScaledQuery], postings: Postings, max_matches: int) -> RescueVote:
    """The scale whose landmarks align best and its matches, else a candidate to verify.

    `postings` holds the catalog rows of every scale's hashes (one lookup for
    all); each scale votes once, on its own votes only (rows of another
    scale's hashes never join its landmarks), so it is judged with the
    rescue's stricter thresholds. The rows are sorted by hash once, and each
    scale's join searches them as they are. Ties go to the first scale.
    """
    order = np.argsort(postings[0], kind="stable")
    every_row = (
        postings[0][order].astype(np.int64),
        postings[1][order].astype(np.int64),
        postings[2][order].astype(np.int64),
    )
    best = RescueVote(1.0, [])
    to_verify: tuple[ScaledQuery, MatchCandidate] | None = None
    for query in queries:
        scale_vote = vote(query.hashes, query.times, every_row, max_matches, postings_sorted=True)
        matches = scale_vote.confident(every_row, RESCUE_MIN_ALIGNED, RESCUE_MIN_RATIO)
        if matches and (not best.matches or matches[0].score > best.matches[0].score):
            best = RescueVote(query.frequency_scale, matches)
        has_peaks = 0 < query.peak_times.size == query.peak_bins.size
        candidate = scale_vote.verification_candidate() if has_peaks else None
        if candidate is not None and (to_verify is None or candidate.score > to_verify[1].score):
            to_verify = (query, candidate)
    return best if best.matches else RescueVote(1.0, [], to_verify)


async def verified_rescue(
    catalog: Catalog, rescue: RescueVote
) -> tuple[float, list[MatchCandidate]]:
    """The rescue's counterpart of plain verification, at the best candidate's scale.

    One candidate for all twelve scales, so the rescue does not get twelve
    chances to pass; the clip's peaks are rescaled like its hashes. Twelve
    scales still gave the candidate more chances than a plain clip's, so its
    confidence stays the vote's: fused identification asks the neural index
    to confirm it if that is low.
    """
    if rescue.matches or rescue.candidate is None:
        return rescue.scale, rescue.matches
    query, candidate = rescue.candidate
    verified = await verified_match(
        catalog, candidate, query.peak_times, query.peak_bins, min_confidence=0.0
    )
    return (query.frequency_scale, [verified]) if verified is not None else (1.0, [])


@dataclass(frozen=True)
class NeuralQuery:
    times_s: np.ndarray  # segment starts in the clip, seconds
    vectors: np.ndarray  # [n, dim] float32, unit length


RescaledLandmarks = Callable[[], Awaitable[Sequence[ScaledQuery]]]
RescaledNeural = Callable[[], Awaitable[Sequence[QueryView]]]
VectorSearch = Callable[[np.ndarray, int], Sequence[Sequence[Hit]]]

AUTO: Final = search_pb2.IDENTIFY_METHOD_UNSPECIFIED
_METHOD_ENUM: Final = {
    fusion.LANDMARKS: search_pb2.IDENTIFY_METHOD_LANDMARKS,
    fusion.NEURAL: search_pb2.IDENTIFY_METHOD_NEURAL,
}


async def identify(
    catalog: Catalog,
    landmarks: common_pb2.LandmarkFingerprint,
    max_matches: int,
    *,
    neural: NeuralQuery | None = None,
    rescaled: RescaledLandmarks | None = None,
    vector_search: VectorSearch | None = None,
    method: int = AUTO,
    neural_rescaled: RescaledNeural | None = None,
    vector_has_track: Callable[[int], bool] | None = None,
) -> search_pb2.IdentifyResponse:
    """Landmarks (with the speed rescue) and/or neural search, fused.

    AUTO searches the neural index only when landmarks are not already certain;
    LANDMARKS and NEURAL use one method; FUSED always runs both. `rescaled`
    fetches the clip's rescaled landmarks, asked for only when the plain ones
    match nothing; `neural_rescaled` likewise its pitch views' vectors.
    """
    hashes = np.frombuffer(landmarks.hashes, dtype="<u4")
    times = np.frombuffer(landmarks.times, dtype="<u4").astype(np.int64)
    response = search_pb2.IdentifyResponse(
        query_duration_s=landmarks.duration_s, query_landmarks=len(hashes)
    )
    frame_s = 1.0 / landmarks.frame_rate_hz if landmarks.frame_rate_hz else 0.0
    use_landmarks = method != search_pb2.IDENTIFY_METHOD_NEURAL
    ranked: list[MatchCandidate] = []
    if use_landmarks and hashes.size:
        started = time.perf_counter()
        postings, left_out = await catalog.rarest_postings(hashes, postings_budget(hashes))
        looked_up = time.perf_counter()
        min_ratio = plain_min_ratio(hashes.size)
        plain, ranked = await asyncio.to_thread(
            plain_decision, hashes, times, postings, max_matches, min_ratio
        )
        response.timings.lookup_ms = (looked_up - started) * 1000
        response.timings.match_ms = (time.perf_counter() - looked_up) * 1000
        response.postings = len(postings[0])
        if not ranked and left_out:
            started = time.perf_counter()
            retry_budget = postings_budget(hashes, RETRY_POSTINGS_PER_QUERY_HASH)
            postings, _ = await catalog.rarest_postings(hashes, retry_budget)
            looked_up = time.perf_counter()
            plain, ranked = await asyncio.to_thread(
                plain_decision, hashes, times, postings, max_matches, min_ratio
            )
            response.timings.lookup_ms += (looked_up - started) * 1000
            response.timings.match_ms += (time.perf_counter() - looked_up) * 1000
            response.postings += len(postings[0])
        peak_times = np.frombuffer(landmarks.peak_times, dtype="<u4")
        peak_bins = np.frombuffer(landmarks.peak_bins, dtype="<u4")
        candidate = plain.verification_candidate()
        if not ranked and candidate and peak_times.size and peak_times.size == peak_bins.size:
            started = time.perf_counter()
            verified = await verified_match(catalog, candidate, peak_times, peak_bins)
            ranked = [verified] if verified is not None else []
            response.timings.verify_ms = (time.perf_counter() - started) * 1000

    rescue = bool(use_landmarks and not ranked and rescaled and hashes.size >= RESCUE_MIN_LANDMARKS)
    search_vectors = (
        neural is not None
        and vector_search is not None
        and (
            method in (search_pb2.IDENTIFY_METHOD_NEURAL, search_pb2.IDENTIFY_METHOD_FUSED)
            or (method == AUTO and (not ranked or ranked[0].confidence < fusion.CERTAIN))
        )
    )

    async def run_rescue() -> list[fusion.FusedMatch]:
        if not rescue or rescaled is None:
            return fusion.from_landmarks(ranked, frame_s)
        timings = response.timings
        rescue_started = time.perf_counter()
        queries = await rescaled()
        found: list[MatchCandidate] = []
        scale = 1.0
        extracted = time.perf_counter()
        timings.rescue_extract_ms = (extracted - rescue_started) * 1000
        if queries:
            every_scale = np.concatenate([q.hashes for q in queries])
            rows, _ = await catalog.rarest_postings(
                every_scale, postings_budget(every_scale), parts=RESCUE_LOOKUP_PARTS
            )
            looked_up = time.perf_counter()
            timings.rescue_lookup_ms = (looked_up - extracted) * 1000
            voted = await asyncio.to_thread(vote_rescue, queries, rows, max_matches)
            scale, found = await verified_rescue(catalog, voted)
            timings.rescue_vote_ms = (time.perf_counter() - looked_up) * 1000
            response.postings += len(rows[0])
        timings.rescue_ms = (time.perf_counter() - rescue_started) * 1000
        return fusion.from_landmarks(found, frame_s, scale)

    async def run_neural() -> list[fusion.FusedMatch]:
        if not search_vectors or neural is None or vector_search is None:
            return []
        if neural.times_s.size == 0:
            return []
        timings = response.timings
        neural_started = time.perf_counter()
        # The plain hits are searched once and reused by the pitch views' stage.
        plain_hits = await asyncio.to_thread(vector_search, neural.vectors, DEFAULT_K)
        found = await asyncio.to_thread(
            partial(rank_tracks, max_matches=max_matches, searched=plain_hits),
            neural.times_s,
            neural.vectors,
            vector_search,
        )
        searched = time.perf_counter()
        timings.neural_search_ms = (searched - neural_started) * 1000
        if not found and neural_rescaled is not None:
            views = await neural_rescaled()
            extracted = time.perf_counter()
            timings.neural_views_extract_ms = (extracted - searched) * 1000
            if views:
                plain = QueryView(1.0, neural.times_s, neural.vectors)
                found = await asyncio.to_thread(
                    partial(rank_views, max_matches=max_matches, searched=plain_hits),
                    [plain, *views],
                    vector_search,
                )
                timings.neural_views_search_ms = (time.perf_counter() - extracted) * 1000
        timings.neural_ms = (time.perf_counter() - neural_started) * 1000
        return fusion.from_neural(found)

    landmark_found, neural_found = await asyncio.gather(run_rescue(), run_neural())
    without_vectors: set[int] = set()
    if search_vectors and vector_has_track is not None:
        # A weak landmark match the neural search did not confirm is dropped, but
        # only if the neural index holds its track (after a model change it is
        # empty until the catalog is re-indexed).
        confirmed = {m.track_key for m in neural_found}
        for lm in landmark_found:
            weak = lm.confidence < fusion.UNCONFIRMED_MIN and lm.track_key not in confirmed
            if weak and not await asyncio.to_thread(vector_has_track, lm.track_key):
                without_vectors.add(lm.track_key)
    fused = fusion.fuse(
        landmark_found,
        neural_found,
        max_matches,
        neural_ran=search_vectors,
        without_vectors=without_vectors,
    )
    if not fused:
        return response
    tracks = await catalog.tracks_by_key([m.track_key for m in fused])
    for match in fused:
        track = tracks.get(match.track_key)
        if track is None:  # deleted between the lookup and now
            continue
        response.matches.append(
            search_pb2.Match(
                track=track.to_proto(),
                offset_s=match.offset_s,
                score=match.score,
                confidence=match.confidence,
                frequency_scale=match.frequency_scale,
                methods=[_METHOD_ENUM[m] for m in match.methods],
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
