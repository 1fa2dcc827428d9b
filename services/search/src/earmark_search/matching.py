"""Offset-consistency voting over landmark postings (Wang 2003).

A query clip taken from a catalog track shares many hashes with it, and for the
shared ones ``track_time - query_time`` is (nearly) the same number: where the
clip starts in the track. Random hash collisions scatter over all offsets. So the
match is the (track, offset) cell with the most votes, provided it stands clearly
above the best competing track and above the level random collisions reach.

Pure numpy, no Python loop over landmarks or postings. See docs/landmarks.md for
the decision rule and the confidence formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

DEFAULT_MIN_ALIGNED: Final = 10
DEFAULT_MIN_RATIO: Final = 2.0

# Offsets are frame differences; clips and tracks don't share a frame grid, so a
# true alignment smears over two adjacent offsets. Votes are pooled over +-1
# (the neighbour lookup relies on it being exactly 1).
_TOLERANCE: Final = 1
_WINDOW_CELLS: Final = 2 * _TOLERANCE + 1
# Packed (track, offset, query landmark) keys must stay below this.
_KEY_LIMIT: Final = 1 << 62
# Candidates whose score is recomputed exactly (deduplicating query landmarks over
# the tolerance window) beyond the max_matches requested.
_EXTRA_CANDIDATES: Final = 4
# Lower bound on the number of offsets a track could align at (~16 s): keeps a
# handful of postings from looking like a dense background.
_MIN_OFFSET_SPAN: Final = 512
# Confidence calibration, fixed so that confidences are comparable across calls
# whatever thresholds the caller picks: a score/background ratio of
# _CONF_RATIO_MID gives 0.5 on the ratio term, a score of _CONF_SCORE_SCALE gives
# 1 - 1/e on the size term.
_CONF_RATIO_MID: Final = 2.0
_CONF_RATIO_SHARPNESS: Final = 4.0
_CONF_SCORE_SCALE: Final = 10.0

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class MatchCandidate:
    track_key: int  # integer key of the catalog track
    offset_frames: int  # track_time - query_time at the best alignment
    score: int  # query landmarks aligned at that offset (+-1 frame tolerance)
    confidence: float  # calibrated-ish probability in [0, 1]
    # What the score was compared with: the next track's score or the level
    # random coincidences reach, whichever is higher (>= 1).
    runner_up: float = 1.0


def rank_matches(
    query_hashes: npt.ArrayLike,
    query_times: npt.ArrayLike,
    posting_hashes: npt.ArrayLike,
    posting_tracks: npt.ArrayLike,
    posting_times: npt.ArrayLike,
    *,
    max_matches: int = 1,
    min_aligned: int = DEFAULT_MIN_ALIGNED,
    min_ratio: float = DEFAULT_MIN_RATIO,
    postings_sorted: bool = False,
) -> list[MatchCandidate]:
    """Best-aligned catalog tracks for a query, strongest first.

    Postings are the catalog rows ``(hash, track_key, time)`` whose hash occurs in
    the query; extra rows are harmless (they never join). A candidate is returned
    only if its score is >= ``min_aligned`` and >= ``min_ratio`` times its
    runner-up: the best score among tracks ranked below it, or the estimated
    random-coincidence level when no track is. Candidates are returned in rank
    order and the list stops at the first one that fails, so ``[]`` means "no
    confident match". ``postings_sorted``: the postings are in hash order
    already (the join then skips sorting them).
    """
    if max_matches < 1:
        raise ValueError(f"max_matches must be >= 1, got {max_matches}")
    qh = _as_int_vector(query_hashes, "query_hashes")
    qt = _as_int_vector(query_times, "query_times")
    ph = _as_int_vector(posting_hashes, "posting_hashes")
    ptrack = _as_int_vector(posting_tracks, "posting_tracks")
    pt = _as_int_vector(posting_times, "posting_times")
    if qh.size != qt.size:
        raise ValueError(f"query_hashes and query_times differ in length: {qh.size} != {qt.size}")
    if not ph.size == ptrack.size == pt.size:
        raise ValueError(
            "posting arrays differ in length: "
            f"hashes={ph.size} tracks={ptrack.size} times={pt.size}"
        )

    pairs = join_postings(qh, qt, ph, ptrack, pt, sorted_by_hash=postings_sorted)
    if pairs is None:
        return []
    tracks, offsets, q_idx = pairs
    n_q = qh.size

    # Every pair becomes one int64 key ordered by (track, offset, query landmark),
    # so a single sort gives deduplication, the (track, offset) histogram and
    # per-track runs at once. A padding of one offset on each side keeps cell +-1
    # inside the same track.
    off_min = int(offsets.min())
    span = int(offsets.max()) - off_min + 1 + 2 * _TOLERANCE
    t_min = int(tracks.min())
    uniq_tracks: IntArray | None = None
    if (int(tracks.max()) - t_min + 1) * span * n_q < _KEY_LIMIT:
        track_ix = tracks - t_min
    else:  # sparse track keys: densify first (one more sort)
        uniq_tracks = _sorted_unique(np.sort(tracks))
        track_ix = np.searchsorted(uniq_tracks, tracks).astype(np.int64)
        if uniq_tracks.size * span * n_q >= _KEY_LIMIT:
            raise ValueError("offset range too large to index (are times frame indices?)")
    vote = np.sort((track_ix * span + (offsets - off_min + _TOLERANCE)) * n_q + q_idx)
    # Identical keys can only come from duplicated posting rows; dropping them makes
    # a query landmark vote at most once per (track, offset).
    vote = _sorted_unique(vote)
    vote_cell = vote // n_q

    cell_start = np.flatnonzero(np.r_[True, vote_cell[1:] != vote_cell[:-1]])
    cells = vote_cell[cell_start]
    counts = np.diff(np.r_[cell_start, vote_cell.size])
    # Cells are sorted and unique, so offset o+-1 of the same track can only sit
    # right next to o.
    adjacent = (cells[1:] - cells[:-1]) == 1
    smoothed = counts.copy()
    smoothed[1:] += np.where(adjacent, counts[:-1], 0)
    smoothed[:-1] += np.where(adjacent, counts[1:], 0)

    cell_track = cells // span
    seg = np.flatnonzero(np.r_[True, cell_track[1:] != cell_track[:-1]])  # per track
    seg_len = np.diff(np.r_[seg, cells.size])
    n_seg = seg.size
    # Best cell per track: highest pooled score, then highest exact count, then
    # earliest offset (cells are in offset order within a track).
    compound = smoothed * (int(counts.max()) + 1) + counts
    seg_best = np.maximum.reduceat(compound, seg)
    is_best = compound == np.repeat(seg_best, seg_len)
    best_idx = np.flatnonzero(is_best)
    best_idx = best_idx[np.r_[True, cell_track[best_idx[1:]] != cell_track[best_idx[:-1]]]]
    best_smoothed = smoothed[best_idx]

    # Candidates: the top max_matches + extra tracks by pooled score; ties at the
    # cut are all kept and broken by track order, so the result is deterministic.
    n_want = min(max_matches + _EXTRA_CANDIDATES, n_seg)
    cut = np.partition(best_smoothed, n_seg - n_want)[n_seg - n_want]
    pool = np.flatnonzero(best_smoothed >= cut)
    pool = pool[np.lexsort((pool, -best_smoothed[pool]))]
    cand = pool[:n_want]  # segment indices
    outside = int(best_smoothed[pool[n_want]]) if pool.size > n_want else 0
    if pool.size == n_want and n_seg > n_want:
        outside = int(np.max(best_smoothed[best_smoothed < cut]))

    # The pooled score counts a query landmark twice if it votes at two adjacent
    # offsets (e.g. a hash repeated on consecutive frames): recount candidates
    # with each query landmark counted once per window. A window is at most three
    # adjacent cells, i.e. one contiguous run of the sorted votes.
    best = best_idx[cand]
    n_cells = cells.size
    left = np.maximum(best - 1, 0)
    right = np.minimum(best + 1, n_cells - 1)
    lo_cell = np.where(cells[left] == cells[best] - 1, left, best)
    hi_cell = np.where(cells[right] == cells[best] + 1, right, best)
    vote_bound = np.r_[cell_start, vote.size]
    v_lo = vote_bound[lo_cell]
    v_len = vote_bound[hi_cell + 1] - v_lo
    in_window = concat_ranges(v_lo, v_len)
    owner = np.repeat(np.arange(cand.size), v_len)
    owner_q = owner * n_q + (vote[in_window] - vote_cell[in_window] * n_q)
    exact = np.bincount(_sorted_unique(np.sort(owner_q)) // n_q, minlength=cand.size)

    rerank = np.lexsort((cand, -exact))
    cand, exact = cand[rerank], exact[rerank]
    cand_offset = cells[best_idx[cand]] % span - _TOLERANCE + off_min
    cand_ix = cell_track[seg[cand]]
    cand_key = uniq_tracks[cand_ix] if uniq_tracks is not None else cand_ix + t_min
    # Offsets a track's votes spread over, for the random-coincidence estimate.
    cand_span = cells[seg[cand] + seg_len[cand] - 1] - cells[seg[cand]] + 1
    cand_votes = vote_bound[seg[cand] + seg_len[cand]] - vote_bound[seg[cand]]

    results: list[MatchCandidate] = []
    for rank in range(min(max_matches, n_want)):
        score = int(exact[rank])
        below = int(exact[rank + 1]) if rank + 1 < n_want else outside
        background = _background_level(int(cand_votes[rank]) - score, int(cand_span[rank]))
        runner_up = max(float(below), background, 1.0)
        if score < min_aligned or score < min_ratio * runner_up:
            break
        results.append(
            MatchCandidate(
                track_key=int(cand_key[rank]),
                offset_frames=int(cand_offset[rank]),
                score=score,
                confidence=match_confidence(score, runner_up),
                runner_up=runner_up,
            )
        )
    return results


def match_confidence(score: float, background: float) -> float:
    """Monotone map of (score, score / background) to [0, 1].

    ``r = score / (_CONF_RATIO_MID * background)``; ratio term ``r^k / (1 + r^k)``
    (a logistic in log-ratio), size term ``1 - exp(-score / _CONF_SCORE_SCALE)``;
    confidence is their product. Increases with score, decreases with background.
    """
    if score <= 0:
        return 0.0
    ratio = score / (_CONF_RATIO_MID * max(background, 1.0))
    rk = ratio**_CONF_RATIO_SHARPNESS
    ratio_term = rk / (1.0 + rk)
    size_term = 1.0 - float(np.exp(-score / _CONF_SCORE_SCALE))
    return float(min(1.0, max(0.0, ratio_term * size_term)))


def _background_level(random_pairs: int, offset_span: int) -> float:
    """Score random coincidences alone would plausibly reach in one track.

    Votes not in the match window are taken as random and spread uniformly over
    the offsets the track could align at; lambda is the expected count per
    +-tolerance window, and mean + 3 sd of a Poisson(lambda) bounds its maximum.
    """
    span = max(offset_span, _MIN_OFFSET_SPAN)
    lam = _WINDOW_CELLS * max(random_pairs, 0) / span
    return lam + 3.0 * float(np.sqrt(lam))


def join_postings(
    qh: IntArray,
    qt: IntArray,
    ph: IntArray,
    ptrack: IntArray,
    pt: IntArray,
    *,
    sorted_by_hash: bool = False,
) -> tuple[IntArray, IntArray, IntArray] | None:
    """Every (query landmark, posting) pair sharing a hash, as (track, offset, query index).

    Sorting the postings and binary-searching the few distinct query hashes into
    them is several times cheaper than searching each posting in the query.
    `sorted_by_hash`: `ph` is in ascending order already, so it is searched as it is.
    """
    if qh.size == 0 or ph.size == 0:
        return None
    q_order = np.argsort(qh, kind="stable")
    q_sorted = qh[q_order]
    run_start = np.flatnonzero(np.r_[True, q_sorted[1:] != q_sorted[:-1]])
    run_len = np.diff(np.r_[run_start, q_sorted.size])
    # Order among equal hashes is irrelevant downstream.
    p_order = None if sorted_by_hash else np.argsort(ph)
    p_sorted = ph if p_order is None else ph[p_order]
    lo = np.searchsorted(p_sorted, q_sorted[run_start], side="left")
    n_post = np.searchsorted(p_sorted, q_sorted[run_start], side="right") - lo
    if int(n_post.sum()) == 0:
        return None
    # Postings of each distinct query hash, then each posting times the query
    # landmarks carrying that hash.
    post_pos = concat_ranges(lo, n_post)
    if run_start.size == q_sorted.size:  # usual case: no hash repeats in the query
        rows = post_pos
        q_idx = q_order[np.repeat(run_start, n_post)]
    else:
        per_post = np.repeat(run_len, n_post)
        q_pos = concat_ranges(np.repeat(run_start, n_post), per_post)
        rows = np.repeat(post_pos, per_post)
        q_idx = q_order[q_pos]
    posting = rows if p_order is None else p_order[rows]
    return ptrack[posting], pt[posting] - qt[q_idx], q_idx


def concat_ranges(starts: IntArray, lengths: IntArray) -> IntArray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])``, vectorised."""
    total = int(lengths.sum())
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    out: IntArray = np.arange(total, dtype=np.int64) + shift
    return out


def _sorted_unique(a: IntArray) -> IntArray:
    """Distinct values of an already sorted array (np.unique would sort again)."""
    if a.size == 0:
        return a
    out: IntArray = a[np.r_[True, a[1:] != a[:-1]]]
    return out


def _as_int_vector(a: npt.ArrayLike, name: str) -> IntArray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)
