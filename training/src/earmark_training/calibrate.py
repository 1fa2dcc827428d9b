"""Fit the match decision of `earmark_search.vector_matching` without touching held-out tracks.

Usage::

    python -m earmark_training.calibrate --corpus ~/.cache/earmark/corpus [--out FILE]

Calibration data (docs/neural.md, "Calibration"), ``--negatives unseen``
(the default since nafp-small-v3):
- index: the training tracks and every other catalog track the model never
  trained on ("unseen catalog", the even places of its sorted list);
- positives: degraded excerpts of those unseen indexed tracks, drawn with
  seed 1 (the evaluation uses seed 0, so the excerpts differ);
- negatives: degraded excerpts of the other unseen tracks (odd places), which
  are not in this index, so every match is a false positive.
Negatives the model never trained on, among distractors it did: a model
trained longer tells its training tracks apart better than music it has
not heard, so negatives cut from training tracks (``--negatives training``:
index = every unseen track, negatives = the training tracks, as v1 and v2
were calibrated) understate the false positives of new music.
The benchmark's held-out tracks are not read, so the false-positive rate that
`earmark_training.evaluate` measures on them is an honest test of these
constants.

A logistic regression over (score, margin, ln segments) gives the confidence
(label: the best candidate is the right track); ``min_confidence`` is then the
lowest level at which at most ``--target-fp`` of the calibration negatives are
accepted (and never below 0.5).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.corpus import DEFAULT_CORPUS_DIR
from bench.degrade import DEFAULT_LENGTHS
from earmark_fingerprint.neural import (
    CATALOG_HOP_S,
    PITCH_VIEW_SEMITONES,
    NeuralEmbedder,
    model_path,
    pitch_view_scales,
)
from earmark_search.vector_matching import DEFAULT_K, Calibration
from earmark_training.data import corpus_split
from earmark_training.evalset import (
    Scored,
    accepted,
    build_index,
    query_set,
    score_queries,
    to_records,
    two_stage,
)

CALIBRATION_SEED = 1


def features(scored: list[Scored]) -> npt.NDArray[np.float64]:
    return np.array(
        [[s.score, s.margin, np.log(max(s.segments, 1))] for s in scored], dtype=np.float64
    )


def fit_logistic(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], l2: float = 1e-3, iters: int = 50
) -> npt.NDArray[np.float64]:
    """Weights [bias, w...] by Newton's method (IRLS) with a small ridge."""
    xb = np.hstack([np.ones((x.shape[0], 1)), x])
    w = np.zeros(xb.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        grad = xb.T @ (p - y) + l2 * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + l2 * np.eye(w.size)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w


def fit(scored: list[Scored], target_fp: float) -> tuple[Calibration, dict[str, int]]:
    """Logistic weights on (score, margin, ln segments), then the threshold that
    accepts at most ``target_fp`` of the negatives."""
    y = np.array(
        [(not s.query.negative) and s.track_id == s.query.track_id for s in scored], dtype=float
    )
    x = features(scored)
    w = fit_logistic(x, y)
    cal = Calibration(float(w[0]), float(w[1]), float(w[2]), float(w[3]), 0.5)
    neg = np.array([s.query.negative for s in scored])
    conf = cal.confidence(x[:, 0], x[:, 1], [s.segments for s in scored])
    neg_conf = np.sort(conf[neg])
    allowed = int(np.floor(target_fp * neg_conf.size))
    # Accept only above the (allowed+1)-th highest negative confidence.
    threshold = float(neg_conf[-(allowed + 1)]) if neg_conf.size > allowed else 0.5
    threshold = max(0.5, float(np.nextafter(threshold, 1.0)))
    cal = Calibration(cal.bias, cal.w_score, cal.w_margin, cal.w_log_n, threshold)
    ok = conf >= threshold
    return cal, {
        "queries": len(scored),
        "negatives": int(neg.sum()),
        "negatives_accepted": int(np.sum(ok & neg)),
        "positives_right_and_accepted": int(np.sum(ok & (y == 1))),
        "positives": int(np.sum(~neg)),
        "positives_wrong_track_accepted": int(np.sum(ok & ~neg & (y == 0))),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m earmark_training.calibrate", description=__doc__)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS_DIR)
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: shipped)")
    ap.add_argument("--target-fp", type=float, default=0.002)
    ap.add_argument(
        "--pitch-views",
        type=lambda s: [float(x) for x in s.split(",") if x],
        default=list(PITCH_VIEW_SEMITONES),
        help="semitones of the pitch views to fit a second calibration for ('' for none)",
    )
    ap.add_argument(
        "--pitched-target-fp",
        type=float,
        default=0.001,
        help="share of the negatives the plain search rejected that the pitch views may accept",
    )
    ap.add_argument("--k", type=int, default=DEFAULT_K)
    ap.add_argument("--cache", type=Path, default=Path("/work/runs/cache"))
    ap.add_argument("--out", type=Path, default=None, help="write the constants as JSON here")
    ap.add_argument(
        "--negatives",
        choices=("unseen", "training"),
        default="unseen",
        help="cut the negatives from unseen catalog tracks (left out of the index) or from "
        "the training tracks (the whole unseen catalog indexed)",
    )
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    split = corpus_split(args.corpus)
    embedder = NeuralEmbedder(args.model or model_path(), threads=1)
    if args.negatives == "unseen":
        unseen = sorted(split.unseen_catalog, key=lambda t: t.track_id)
        indexed, positives, negatives = split.train + unseen[0::2], unseen[0::2], unseen[1::2]
    else:
        indexed, positives, negatives = split.unseen_catalog, split.unseen_catalog, split.train
    index = build_index(embedder, indexed, CATALOG_HOP_S, args.cache, log)
    queries = query_set(
        "calibration",
        positives,
        negatives,
        split.train,
        seed=CALIBRATION_SEED,
        lengths=DEFAULT_LENGTHS,
        conditions=None,
        cache_dir=args.cache,
        log=log,
    )
    scored = score_queries(embedder, index, queries, k=args.k, catalog_hop_s=CATALOG_HOP_S, log=log)
    cal, summary = fit(scored, args.target_fp)
    result: dict[str, object] = {"calibration": asdict(cal), **summary}
    if args.pitch_views:
        pitched = score_queries(
            embedder,
            index,
            queries,
            k=args.k,
            catalog_hop_s=CATALOG_HOP_S,
            freq_scales=[1.0, *pitch_view_scales(args.pitch_views)],
            log=log,
        )
        # The pitch views only see the clips the plain search did not accept.
        rest = [i for i, s in enumerate(scored) if not accepted(s, cal)[0]]
        pitched_cal, pitched_summary = fit([pitched[i] for i in rest], args.pitched_target_fp)
        result["pitched_calibration"] = asdict(pitched_cal)
        result["pitched"] = {"pitch_views_semitones": args.pitch_views, **pitched_summary}
        both = to_records(two_stage(scored, pitched, cal, pitched_cal))
        result["two_stage"] = {
            "negatives_accepted": sum(r.negative and r.predicted_track is not None for r in both),
            "positives_right_and_accepted": sum(
                (not r.negative) and r.predicted_track == r.track_id for r in both
            ),
        }
    summary = {
        **result,
        "k": args.k,
        "model": str(embedder.path.name),
        "negatives_from": args.negatives,
        "indexed_tracks": len(indexed),
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
