"""Replay the landmark decision offline on the cached evaluation query sets.

The service decides a landmark match from the offset vote (`rank_matches`),
then asks the votes to come from enough distinct moments of the clip, then
gives a clip that matched nothing a rescue at a dozen frequency scales
(`identify`). This script runs the same functions on an in-memory catalog
(every posting, no PostgreSQL) over the query sets `evaluate` (the benchmark's
queries) and `calibrate` (other excerpts, another catalog) cache, and writes
each query's best candidate with the features a decision could use, so that a
rule can be fitted on one set and checked on the other before a benchmark run.

    python -m earmark_training.landmark_decision --set calibration --out /work/runs/lm-cal.jsonl
    python -m earmark_training.landmark_decision --set eval --out /work/runs/lm-eval.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.corpus import DEFAULT_CORPUS_DIR, CorpusTrack, decode_audio
from bench.degrade import DEFAULT_LENGTHS
from earmark_fingerprint.landmarks import (
    ALGORITHM_VERSION,
    SAMPLE_RATE_HZ,
    Landmarks,
    extract_landmarks,
    extract_query_landmarks,
    extract_rescaled_query_landmarks,
)
from earmark_search.identify import (
    RESCUE_MIN_ALIGNED,
    RESCUE_MIN_LANDMARKS,
    RESCUE_MIN_RATIO,
    VERIFIED_MIN_CONFIDENCE,
    VERIFY_MIN_ALIGNED,
    VERIFY_MIN_RATIO,
    VERIFY_PEAK_RATIO,
    plain_min_ratio,
)
from earmark_search.matching import DEFAULT_MIN_ALIGNED, concat_ranges, rank_matches
from earmark_search.scanning import MIN_DISTINCT_TIMES, aligned_times
from earmark_search.verification import PeakCheck, check_alignment, pack_peaks

from .calibrate import CALIBRATION_SEED
from .data import corpus_split
from .evalset import EvalQuery, query_set

IntArray = npt.NDArray[np.int64]
# Loose enough to see the near misses of the service's thresholds, peak
# verification's included (the ranking does not depend on them).
LOOSE_MIN_ALIGNED = 6
LOOSE_MIN_RATIO = 1.0


@dataclass
class LandmarkIndex:
    """Every catalog posting, sorted by hash, with each hash's posting count."""

    hashes: IntArray
    tracks: IntArray
    times: IntArray
    track_ids: list[str]
    peaks: list[npt.NDArray[np.uint32]]  # each track's sorted peak keys

    def postings(self, query_hashes: IntArray) -> tuple[IntArray, IntArray, IntArray]:
        wanted = np.unique(query_hashes)
        lo = np.searchsorted(self.hashes, wanted, side="left")
        hi = np.searchsorted(self.hashes, wanted, side="right")
        idx = concat_ranges(lo, hi - lo)
        return self.hashes[idx], self.tracks[idx], self.times[idx]

    def counts(self, hashes: IntArray) -> IntArray:
        lo = np.searchsorted(self.hashes, hashes, side="left")
        hi = np.searchsorted(self.hashes, hashes, side="right")
        out: IntArray = (hi - lo).astype(np.int64)
        return out


def build_landmark_index(
    tracks: Sequence[CorpusTrack], cache_dir: Path, log: Callable[[str], None]
) -> LandmarkIndex:
    ids = [t.track_id for t in tracks]
    key = hashlib.sha256(json.dumps([ALGORITHM_VERSION, ids]).encode()).hexdigest()[:16]
    path = cache_dir / f"landmarks-peaks-{key}.npz"
    if path.exists():
        with np.load(path) as z:
            peaks = np.split(z["peaks"], np.cumsum(z["peak_counts"])[:-1])
            return LandmarkIndex(z["hashes"], z["tracks"], z["times"], ids, peaks)
    hs, ks, ts, ps = [], [], [], []
    t0 = time.monotonic()
    for i, t in enumerate(tracks):
        lm = extract_landmarks(decode_audio(t.path, SAMPLE_RATE_HZ))
        hs.append(lm.hashes.astype(np.int64))
        ks.append(np.full(lm.hashes.size, i, np.int64))
        ts.append(lm.times.astype(np.int64))
        ps.append(pack_peaks(lm.peak_times, lm.peak_bins))
    h, k, tt = np.concatenate(hs), np.concatenate(ks), np.concatenate(ts)
    order = np.argsort(h, kind="stable")
    index = LandmarkIndex(h[order], k[order], tt[order], ids, ps)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        hashes=index.hashes,
        tracks=index.tracks,
        times=index.times,
        peaks=np.concatenate(ps),
        peak_counts=np.array([p.size for p in ps]),
    )
    log(f"landmark index: {len(tracks)} tracks, {h.size} postings, {time.monotonic() - t0:.0f} s")
    return index


def candidate_features(
    index: LandmarkIndex, hashes: IntArray, times: IntArray, min_aligned: int, min_ratio: float
) -> dict[str, Any] | None:
    postings = index.postings(hashes)
    ranked = rank_matches(
        hashes, times, *postings, max_matches=1, min_aligned=min_aligned, min_ratio=min_ratio
    )
    if not ranked:
        return None
    m = ranked[0]
    voted = aligned_times(hashes, times, postings, m.track_key, m.offset_frames)
    # The query hashes the matched track has at all (any offset): how common
    # they are in the catalog.
    ph, ptrack, _ = postings
    keep = ptrack == m.track_key
    mine = np.isin(hashes, ph[keep])
    frames = max(int(times.max() - times.min()) + 1, 1) if times.size else 1
    return {
        "track": index.track_ids[m.track_key],
        "offset_frames": m.offset_frames,
        "score": m.score,
        "runner_up": m.runner_up,
        "confidence": m.confidence,
        "n_landmarks": int(hashes.size),
        "distinct_times": int(voted.size),
        "time_span": float((voted.max() - voted.min() + 1) / frames) if voted.size else 0.0,
        "mean_log_df": float(np.mean(np.log(index.counts(hashes[mine]) + 1)))
        if mine.any()
        else 0.0,
        "postings": int(ph.size),
    }


def _add_peak_check(features: dict[str, Any], index: LandmarkIndex, clip: Landmarks) -> None:
    key = index.track_ids.index(features["track"])
    check = check_alignment(
        clip.peak_times, clip.peak_bins, index.peaks[key], features["offset_frames"]
    )
    features["peak_hits"], features["peak_chance"] = check.hits, check.chance


def _verifiable(f: dict[str, Any]) -> bool:
    return bool(
        f["score"] >= VERIFY_MIN_ALIGNED and f["score"] >= VERIFY_MIN_RATIO * f["runner_up"]
    )


def _verified(f: dict[str, Any]) -> bool:
    return bool(PeakCheck(f["peak_hits"], f["peak_chance"]).passes(VERIFY_PEAK_RATIO))


def replay(index: LandmarkIndex, q: EvalQuery) -> dict[str, Any]:
    lm = extract_query_landmarks(q.audio)
    hashes, times = lm.hashes.astype(np.int64), lm.times.astype(np.int64)
    row: dict[str, Any] = {
        "query_id": q.query_id,
        "condition": q.condition,
        "length_s": q.length_s,
        "negative": q.negative,
        "track_id": q.track_id,
        "n_landmarks": int(hashes.size),
    }
    row["plain"] = plain = candidate_features(
        index, hashes, times, LOOSE_MIN_ALIGNED, LOOSE_MIN_RATIO
    )
    if plain is not None:
        _add_peak_check(plain, index, lm)
    # Each scale's best candidate (the ranking does not depend on thresholds);
    # the decision picks among those that pass, as vote_rescue does.
    scales: list[dict[str, Any]] = []
    if hashes.size >= RESCUE_MIN_LANDMARKS:
        for scaled in extract_rescaled_query_landmarks(q.audio):
            f = candidate_features(
                index,
                scaled.hashes.astype(np.int64),
                scaled.times.astype(np.int64),
                LOOSE_MIN_ALIGNED,
                LOOSE_MIN_RATIO,
            )
            if f is not None:
                _add_peak_check(f, index, scaled)
                scales.append(f)
    row["rescue_scales"] = scales
    return row


def service_decision(row: dict[str, Any]) -> dict[str, Any] | None:
    """The candidate the service's rule (identify.py) accepts, if any."""
    plain = row["plain"]
    if (
        plain is not None
        and plain["score"] >= DEFAULT_MIN_ALIGNED
        and plain["score"] >= plain_min_ratio(plain["n_landmarks"]) * plain["runner_up"]
        and plain["distinct_times"] >= MIN_DISTINCT_TIMES
    ):
        return dict(plain)
    if plain is not None and _verifiable(plain) and _verified(plain):
        return dict(plain, verified="plain")
    if row["n_landmarks"] < RESCUE_MIN_LANDMARKS:
        return None
    passing = [
        f
        for f in row["rescue_scales"]
        if f["score"] >= RESCUE_MIN_ALIGNED
        and f["score"] >= RESCUE_MIN_RATIO * f["runner_up"]
        and f["distinct_times"] >= MIN_DISTINCT_TIMES
    ]
    # The first scale with the highest score, as vote_rescue keeps it.
    if passing:
        return dict(max(passing, key=lambda f: f["score"]))
    # Else one candidate for all scales, verified at its scale (verified_rescue).
    verifiable = [f for f in row["rescue_scales"] if _verifiable(f)]
    if verifiable:
        best = max(verifiable, key=lambda f: f["score"])
        if _verified(best):
            return dict(best, verified="rescue")
    return None


def summary(rows: Sequence[dict[str, Any]]) -> str:
    positives = [r for r in rows if not r["negative"]]
    negatives = [r for r in rows if r["negative"]]
    answers = [(service_decision(r), r["track_id"]) for r in positives]
    right = sum(1 for m, truth in answers if m is not None and m["track"] == truth)
    false = sum(1 for r in negatives if service_decision(r) is not None)
    return (
        f"service rule: top-1 {100 * right / max(len(positives), 1):.2f} % of {len(positives)} "
        f"positives, false positives {false}/{len(negatives)} "
        f"({100 * false / max(len(negatives), 1):.2f} %)"
    )


def write_records(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with path.open("w") as out:
        for r in rows:
            m = service_decision(r)
            record = {
                "query_id": r["query_id"],
                "method": "landmarks",
                "condition": r["condition"],
                "length_s": r["length_s"],
                "negative": r["negative"],
                "track_id": r["track_id"],
                "predicted_track": m["track"] if m else None,
                "confidence": (
                    max(m["confidence"], VERIFIED_MIN_CONFIDENCE)
                    if m.get("verified") == "plain"
                    else m["confidence"]
                )
                if m
                else None,
                "score": m["score"] if m else None,
            }
            out.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m earmark_training.landmark_decision")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS_DIR)
    ap.add_argument("--set", choices=("eval", "calibration"), default="eval")
    ap.add_argument("--cache", type=Path, default=Path("/work/runs/cache"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--summary-only", action="store_true", help="only summarise an existing --out file"
    )
    ap.add_argument(
        "--records",
        type=Path,
        default=None,
        help="also write the service rule's answers as bench records (bench.fusion_replay)",
    )
    args = ap.parse_args(argv)
    if args.summary_only:
        rows = [json.loads(line) for line in args.out.read_text().splitlines()]
        print(summary(rows))
        if args.records:
            write_records(rows, args.records)
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    split = corpus_split(args.corpus)
    if args.set == "eval":
        catalog = sorted(split.train + split.unseen_catalog, key=lambda t: t.track_id)
        queries = query_set("eval", catalog, split.held_out, split.held_out, seed=0,
                            lengths=DEFAULT_LENGTHS, conditions=None, cache_dir=args.cache,
                            log=log)  # fmt: skip
    else:
        catalog = split.unseen_catalog
        queries = query_set("calibration", catalog, split.train, split.train,
                            seed=CALIBRATION_SEED, lengths=DEFAULT_LENGTHS, conditions=None,
                            cache_dir=args.cache, log=log)  # fmt: skip
    index = build_landmark_index(catalog, args.cache, log)
    t0 = time.monotonic()
    with args.out.open("w") as out:
        for i, q in enumerate(queries):
            out.write(json.dumps(replay(index, q)) + "\n")
            if (i + 1) % 500 == 0:
                log(f"{i + 1}/{len(queries)} queries, {time.monotonic() - t0:.0f} s")
    rows = [json.loads(line) for line in args.out.read_text().splitlines()]
    print(summary(rows))
    if args.records:
        write_records(rows, args.records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
