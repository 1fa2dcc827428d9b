"""Identification from neural segment vectors: top-k per segment, then offset-consistent scoring.

A query clip gives one unit vector per segment (``earmark_fingerprint.neural``,
dense hop); every catalog track gives one per segment at ``catalog_hop_s``. Each
query segment's top-k neighbours ``(track_key, segment_time, similarity)`` each
vote for where the clip would start in that track: ``segment_time -
query_time``. The true (track, start) collects high similarities from most
query segments at nearly the same start; chance neighbours scatter.

Score of a candidate (track, start, speed): the mean over ALL query segments
of the best similarity that segment has with that track at a start within
``catalog_hop_s / 2`` (the catalog grid's alignment error), where query time t
maps to track time ``start + speed * t`` for a speed in ``DEFAULT_SPEEDS``
(+-5 %, so sped-up or slowed clips stay aligned over their whole length); a
segment with no such neighbour counts its k-th similarity, an upper bound on
what it could have had. So the score is comparable across clip lengths, and a clip that only
matches in one segment scores low.

Decision: a logistic model over (score, margin to the best other track, log
number of segments) gives the confidence; below ``min_confidence`` there is no
match. The constants were fitted for the shipped model on calibration data that
excludes the benchmark's held-out tracks (docs/neural.md, "Calibration").

Pure numpy; the search itself is a callable, so Milvus (``vectors``), exact
search (``ExactIndex``) or a test double can serve it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# (track_key, segment_time_s, similarity) — one neighbour of one query segment.
Hit = tuple[int, float, float]
# All query segments' vectors [n, dim] and k -> for each segment its hits, best first.
SearchFn = Callable[[FloatArray, int], Sequence[Sequence[Hit]]]

DEFAULT_K: Final = 20
# Must equal the hop the catalog was embedded at (earmark_fingerprint.neural.CATALOG_HOP_S).
DEFAULT_CATALOG_HOP_S: Final = 0.25
# Playback speeds tried when aligning (vinyl / radio pitch-and-tempo changes up
# to +-5 %): at a 1 % step a 10 s clip drifts at most 0.05 s from the best one.
DEFAULT_SPEEDS: Final = tuple(round(1.0 + 0.01 * i, 2) for i in range(-5, 6))


@dataclass(frozen=True)
class Calibration:
    """confidence = sigmoid(bias + w_score * score + w_margin * margin + w_log_n * ln(segments))."""

    bias: float
    w_score: float
    w_margin: float
    w_log_n: float
    min_confidence: float

    def confidence(
        self, score: npt.ArrayLike, margin: npt.ArrayLike, segments: npt.ArrayLike
    ) -> npt.NDArray[np.float64]:
        z = (
            self.bias
            + self.w_score * np.asarray(score, dtype=np.float64)
            + self.w_margin * np.asarray(margin, dtype=np.float64)
            + self.w_log_n * np.log(np.maximum(np.asarray(segments, dtype=np.float64), 1.0))
        )
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


# Fitted by `python -m earmark_training.calibrate` for nafp-small-v2 at a 0.25 s
# catalog hop, k = 20 (docs/neural.md, "Decision and calibration"): 0.19 % of the
# calibration negatives (4 of 2125) and 83 % of its positives are accepted.
DEFAULT_CALIBRATION: Final = Calibration(
    bias=-26.573991,
    w_score=34.339082,
    w_margin=19.230510,
    w_log_n=0.848212,
    min_confidence=0.965405,
)
# The pitch views' stage (`rank_views`), fitted the same way on the calibration
# queries the plain stage did not accept: 2 of their 2121 negatives and
# 193 of their 448 positives are accepted.
PITCHED_CALIBRATION: Final = Calibration(
    bias=-24.162608,
    w_score=28.383680,
    w_margin=22.956154,
    w_log_n=1.014231,
    min_confidence=0.836559,
)


@dataclass(frozen=True)
class Candidate:
    track_key: int
    offset_s: float  # where the clip starts in the track
    score: float  # mean aligned similarity over all query segments
    aligned: int  # query segments with a neighbour at this alignment
    segments: int  # query segments in the clip
    speed: float = 1.0  # playback speed at the best alignment (1.05 = 5 % fast)
    # The query view that scored it: the clip read as if its frequencies were
    # divided by this (1.06 = the clip plays about a semitone high).
    frequency_scale: float = 1.0


@dataclass(frozen=True)
class QueryView:
    """A clip's segment vectors, embedded as if its frequencies were divided by
    ``frequency_scale`` (``earmark_fingerprint.neural``, pitch views)."""

    frequency_scale: float
    times_s: npt.NDArray[np.float64]
    vectors: FloatArray


@dataclass(frozen=True)
class VectorMatch:
    track_key: int
    offset_s: float
    score: float
    margin: float  # score minus the best other track's (or the background level)
    aligned: int
    segments: int
    confidence: float
    speed: float = 1.0
    frequency_scale: float = 1.0


def hits_to_arrays(
    hits: Sequence[Sequence[Hit]],
) -> tuple[IntArray, IntArray, npt.NDArray[np.float64], npt.NDArray[np.float64], FloatArray]:
    """(query segment, track, catalog time, similarity) columns, plus each segment's floor.

    The floor of a segment is its lowest returned similarity: any catalog
    segment it did not get back is at most that similar.
    """
    counts = np.array([len(h) for h in hits], dtype=np.int64)
    total = int(counts.sum())
    q = np.repeat(np.arange(len(hits), dtype=np.int64), counts)
    track = np.empty(total, dtype=np.int64)
    ctime = np.empty(total, dtype=np.float64)
    sim = np.empty(total, dtype=np.float64)
    floor = np.zeros(len(hits), dtype=np.float32)
    i = 0
    for seg, seg_hits in enumerate(hits):
        for key, t, s in seg_hits:
            track[i], ctime[i], sim[i] = key, t, s
            i += 1
        if seg_hits:
            floor[seg] = min(h[2] for h in seg_hits)
    return q, track, ctime, sim, floor


def score_candidates(
    query_times: npt.ArrayLike,
    hits: Sequence[Sequence[Hit]],
    *,
    catalog_hop_s: float = DEFAULT_CATALOG_HOP_S,
    speeds: Sequence[float] = DEFAULT_SPEEDS,
) -> list[Candidate]:
    """The best (track, start, speed) each track's hits support, best track first.

    Vectorised over tracks: for each speed, every track's candidate starts (the
    distinct starts its hits imply, to the millisecond) are windowed over its
    hits sorted by implied start, so the work is the number of (start, hit)
    pairs that actually align, not starts x hits.
    """
    qt = np.asarray(query_times, dtype=np.float64)
    if qt.ndim != 1 or len(hits) != qt.size:
        raise ValueError(f"{len(hits)} hit lists for {qt.size} query segments")
    n = qt.size
    q, track, ctime, sim, floor = hits_to_arrays(hits)
    if q.size == 0:
        return []
    tolerance = catalog_hop_s / 2 + 1e-6
    base = float(floor.sum())
    gain = sim - floor[q]
    tracks, group = np.unique(track, return_inverse=True)
    best_total = np.full(tracks.size, -1.0)
    best_start = np.zeros(tracks.size)
    best_speed = np.ones(tracks.size)
    best_aligned = np.zeros(tracks.size, dtype=np.int64)
    # Nearest to 1.0 first, so a tie keeps the plainer explanation.
    for speed in sorted(speeds, key=lambda r: (abs(r - 1.0), r)):
        # Query time t plays track time start + speed * t.
        t_off = ctime - speed * qt[q]
        total, start, aligned = _best_starts(group, tracks.size, t_off, q, gain, n, tolerance)
        better = total > best_total + 1e-12
        best_total[better] = total[better]
        best_start[better] = start[better]
        best_speed[better] = float(speed)
        best_aligned[better] = aligned[better]
    out = [
        Candidate(
            track_key=int(tracks[i]),
            offset_s=float(best_start[i]),
            score=(base + max(float(best_total[i]), 0.0)) / n,
            aligned=int(best_aligned[i]),
            segments=n,
            speed=float(best_speed[i]),
        )
        for i in range(tracks.size)
    ]
    out.sort(key=lambda c: c.score, reverse=True)
    return out


# Tracks' implied starts are laid end to end on one axis, this far apart
# (seconds), so one sorted array and one searchsorted serve every track.
_TRACK_SPAN_S: Final = 1e7


def _best_starts(
    group: IntArray,
    n_tracks: int,
    t_off: npt.NDArray[np.float64],
    q: IntArray,
    gain: npt.NDArray[np.float64],
    n_segments: int,
    tolerance: float,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], IntArray]:
    """Per track, at one speed: the best candidate start's total gain (each query
    segment counts its best hit once), its gain-weighted start, its aligned segments."""
    rounded = np.round(t_off, 3)
    by_centre = np.lexsort((rounded, group))
    distinct = np.ones(by_centre.size, dtype=bool)
    distinct[1:] = (group[by_centre[1:]] != group[by_centre[:-1]]) | (
        rounded[by_centre[1:]] != rounded[by_centre[:-1]]
    )
    c_group = group[by_centre[distinct]]
    centres = rounded[by_centre[distinct]]
    order = np.lexsort((t_off, group))
    axis = group[order] * _TRACK_SPAN_S + t_off[order]
    c_axis = c_group * _TRACK_SPAN_S + centres
    # A little wider than the window: the shift rounds; the exact test follows.
    lo = np.searchsorted(axis, c_axis - tolerance - 1e-3, side="left")
    hi = np.searchsorted(axis, c_axis + tolerance + 1e-3, side="right")
    counts = hi - lo
    pair_centre = np.repeat(np.arange(centres.size), counts)
    pair_hit = order[np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())]
    keep = (group[pair_hit] == c_group[pair_centre]) & (
        np.abs(t_off[pair_hit] - centres[pair_centre]) <= tolerance
    )
    pair_centre, pair_hit = pair_centre[keep], pair_hit[keep]
    pair_gain = gain[pair_hit]
    # Best gain per (centre, query segment): first row of each key, gain descending.
    seg_key = pair_centre * n_segments + q[pair_hit]
    by_key = np.lexsort((-pair_gain, seg_key))
    first = np.ones(by_key.size, dtype=bool)
    first[1:] = seg_key[by_key[1:]] != seg_key[by_key[:-1]]
    kept = by_key[first]
    totals = np.bincount(pair_centre[kept], weights=pair_gain[kept], minlength=centres.size)
    aligned = np.bincount(
        pair_centre[kept], weights=pair_gain[kept] > 0, minlength=centres.size
    ).astype(np.int64)
    weight = np.bincount(pair_centre, weights=pair_gain, minlength=centres.size)
    moment = np.bincount(pair_centre, weights=pair_gain * t_off[pair_hit], minlength=centres.size)
    # Each track's best centre; a tie keeps the earliest start.
    best = np.lexsort((np.arange(centres.size), -totals, c_group))
    head = np.ones(best.size, dtype=bool)
    head[1:] = c_group[best[1:]] != c_group[best[:-1]]
    winner = np.full(n_tracks, -1, dtype=np.int64)
    winner[c_group[best[head]]] = best[head]
    total = np.asarray(totals[winner], dtype=np.float64)
    w = weight[winner]
    start = np.where(w > 0, moment[winner] / np.where(w > 0, w, 1.0), centres[winner])
    return total, np.asarray(start, dtype=np.float64), aligned[winner]


def best_per_track(candidates: Sequence[Candidate]) -> list[Candidate]:
    """One candidate per track, its best-scoring one, best track first (merges the
    candidates of several query views, e.g. frequency scales)."""
    best: dict[int, Candidate] = {}
    for c in candidates:
        if c.track_key not in best or c.score > best[c.track_key].score:
            best[c.track_key] = c
    return sorted(best.values(), key=lambda c: c.score, reverse=True)


def decide(
    candidates: Sequence[Candidate],
    floor_score: float,
    calibration: Calibration = DEFAULT_CALIBRATION,
    max_matches: int = 1,
) -> list[VectorMatch]:
    """Matches whose confidence clears ``calibration.min_confidence``, best first.

    The margin of a candidate is its score minus the best score of the tracks
    ranked below it, or minus ``floor_score`` (the no-alignment level) when
    none is.
    """
    out: list[VectorMatch] = []
    for i, cand in enumerate(candidates[:max_matches]):
        runner_up = candidates[i + 1].score if i + 1 < len(candidates) else floor_score
        margin = cand.score - runner_up
        conf = float(calibration.confidence(cand.score, margin, cand.segments))
        if conf < calibration.min_confidence:
            break
        out.append(
            VectorMatch(
                cand.track_key,
                cand.offset_s,
                cand.score,
                margin,
                cand.aligned,
                cand.segments,
                conf,
                cand.speed,
                cand.frequency_scale,
            )
        )
    return out


def rank_tracks(
    query_times: npt.ArrayLike,
    query_vectors: npt.ArrayLike,
    search: SearchFn,
    *,
    k: int = DEFAULT_K,
    catalog_hop_s: float = DEFAULT_CATALOG_HOP_S,
    speeds: Sequence[float] = DEFAULT_SPEEDS,
    calibration: Calibration = DEFAULT_CALIBRATION,
    max_matches: int = 1,
    searched: Sequence[Sequence[Hit]] | None = None,
) -> list[VectorMatch]:
    """Search every query segment in one call, score alignments, keep confident matches.
    ``searched``: the segments' hits when the caller has searched them already."""
    vecs = np.ascontiguousarray(query_vectors, dtype=np.float32)
    qt = np.asarray(query_times, dtype=np.float64)
    if vecs.ndim != 2 or vecs.shape[0] != qt.size:
        raise ValueError(f"{vecs.shape} vectors for {qt.size} query times")
    if qt.size == 0:
        return []
    candidates, floor = score_views(
        [QueryView(1.0, qt, vecs)],
        search,
        k=k,
        catalog_hop_s=catalog_hop_s,
        speeds=speeds,
        searched=searched,
    )
    return decide(candidates, floor, calibration, max_matches)


def floor_score(hits: Sequence[Sequence[Hit]]) -> float:
    """The no-alignment level: the mean of each segment's lowest returned similarity."""
    return float(np.mean([min((h[2] for h in hs), default=0.0) for hs in hits]))


def view_speeds_for(view: QueryView) -> tuple[float, ...]:
    """The tempos a pitch view can mean: transposed (tempo kept, speed 1) or played
    faster or slower (tempo follows pitch, speed = scale). Two hypotheses instead of
    the plain view's eleven: less work, and fewer chances to align by chance."""
    return (1.0, round(view.frequency_scale, 4))


def score_views(
    views: Sequence[QueryView],
    search: SearchFn,
    *,
    k: int = DEFAULT_K,
    catalog_hop_s: float = DEFAULT_CATALOG_HOP_S,
    speeds: Sequence[float] = DEFAULT_SPEEDS,
    searched: Sequence[Sequence[Hit]] | None = None,
) -> tuple[list[Candidate], float]:
    """Every view's segments searched in one call and scored apart; each track's
    best candidate over the views (best first), and the highest view floor.
    ``speeds`` apply to the plain view (scale 1); a pitch view tries
    ``view_speeds_for`` it. ``searched``: the hits of ``views[0]``, when the
    caller has them already (the plain search that came first)."""
    if searched is not None and (not views or len(searched) != views[0].times_s.size):
        raise ValueError("searched must hold the hits of the first view's segments")
    views = [v for v in views if v.times_s.size]
    if not views:
        return [], 0.0
    rest = views[1:] if searched is not None else views
    hits = list(searched or [])
    if rest:
        hits += search(np.concatenate([np.asarray(v.vectors, np.float32) for v in rest]), k)
    candidates: list[Candidate] = []
    floor = 0.0
    lo = 0
    for view in views:
        view_hits = hits[lo : lo + view.times_s.size]
        lo += view.times_s.size
        view_speeds = speeds if view.frequency_scale == 1.0 else view_speeds_for(view)
        for c in score_candidates(
            view.times_s, view_hits, catalog_hop_s=catalog_hop_s, speeds=view_speeds
        ):
            candidates.append(replace(c, frequency_scale=view.frequency_scale))
        floor = max(floor, floor_score(view_hits))
    return best_per_track(candidates), floor


def rank_views(
    views: Sequence[QueryView],
    search: SearchFn,
    *,
    k: int = DEFAULT_K,
    catalog_hop_s: float = DEFAULT_CATALOG_HOP_S,
    speeds: Sequence[float] = DEFAULT_SPEEDS,
    calibration: Calibration = PITCHED_CALIBRATION,
    max_matches: int = 1,
    searched: Sequence[Sequence[Hit]] | None = None,
) -> list[VectorMatch]:
    """Confident matches over several pitch views of a clip. More views are more
    chances for a chance alignment, hence a calibration fitted on view scores."""
    candidates, floor = score_views(
        views, search, k=k, catalog_hop_s=catalog_hop_s, speeds=speeds, searched=searched
    )
    return decide(candidates, floor, calibration, max_matches)


class ExactIndex:
    """Exact inner-product search over catalog segments in memory (benchmarks, tests, recall)."""

    def __init__(
        self, vectors: npt.ArrayLike, track_keys: npt.ArrayLike, times_s: npt.ArrayLike
    ) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.track_keys = np.asarray(track_keys, dtype=np.int64)
        self.times_s = np.asarray(times_s, dtype=np.float64)
        if not (self.vectors.shape[0] == self.track_keys.size == self.times_s.size):
            raise ValueError("vectors, track_keys and times_s must have the same length")

    def top_k(self, queries: npt.ArrayLike, k: int) -> tuple[IntArray, FloatArray]:
        """Row indices [n, k] and similarities [n, k], best first."""
        sims = np.asarray(queries, dtype=np.float32) @ self.vectors.T
        k = min(k, self.vectors.shape[0])
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        part = np.take_along_axis(sims, idx, axis=1)
        order = np.argsort(-part, axis=1, kind="stable")
        return np.take_along_axis(idx, order, axis=1), np.take_along_axis(part, order, axis=1)

    def search(self, queries: FloatArray, k: int) -> list[list[Hit]]:
        if self.vectors.shape[0] == 0:
            return [[] for _ in range(len(queries))]
        idx, sims = self.top_k(queries, k)
        keys, times = self.track_keys[idx], self.times_s[idx]
        return [
            list(zip(keys[i].tolist(), times[i].tolist(), sims[i].tolist(), strict=True))
            for i in range(idx.shape[0])
        ]
