"""How far off may a rescale factor be, and does the shipped grid catch speed and
pitch changes? In-process, on an in-memory catalog of corpus tracks.

Usage::

    python -m bench.rescale_tolerance --tracks 25 --seconds 5

Prints two tables: (1) top-1 when the clip is rescaled by the true factor times
(1 + error), one scale only; (2) top-1 and scale chosen by the shipped rescue
(`RESCALE_FACTORS`, `vote_rescue`) per condition, and its false
positives on clips of tracks outside the catalog.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from bench.corpus import DEFAULT_CORPUS_DIR, decode_audio, list_corpus
from bench.degrade import pitch_shift, resample_speed
from earmark_fingerprint.landmarks import (
    RESCALE_FACTORS,
    SAMPLE_RATE_HZ,
    extract_landmarks,
    extract_rescaled_query_landmarks,
)
from earmark_search.identify import ScaledQuery, vote_rescue
from earmark_search.matching import rank_matches

SR = SAMPLE_RATE_HZ
CONDITIONS: dict[str, tuple[str, float]] = {
    "speed -5 %": ("speed", 0.95),
    "speed -3.5 % (off-grid)": ("speed", 0.965),
    "speed -2 %": ("speed", 0.98),
    "speed +2 %": ("speed", 1.02),
    "speed +2.5 % (off-grid)": ("speed", 1.025),
    "speed +5 %": ("speed", 1.05),
    "pitch -1 st": ("pitch", 2 ** (-1 / 12)),
    "pitch +1 st": ("pitch", 2 ** (1 / 12)),
}
ERRORS = (0.0, 0.0025, 0.005, 0.0075, 0.01)


class MemoryCatalog:
    def __init__(self, tracks: Sequence[np.ndarray]) -> None:
        lms = [extract_landmarks(x) for x in tracks]
        h = np.concatenate([lm.hashes for lm in lms]).astype(np.int64)
        k = np.concatenate([np.full(lm.hashes.size, i) for i, lm in enumerate(lms)])
        t = np.concatenate([lm.times for lm in lms]).astype(np.int64)
        order = np.argsort(h, kind="stable")
        self.h, self.k, self.t = h[order], k[order], t[order]

    def postings(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = np.unique(hashes.astype(np.int64))
        lo, hi = np.searchsorted(self.h, u, "left"), np.searchsorted(self.h, u, "right")
        idx = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)] + [[]])
        idx = idx.astype(np.int64)
        return self.h[idx], self.k[idx], self.t[idx]


def degrade(x: np.ndarray, kind: str, factor: float) -> np.ndarray:
    if kind == "speed":
        return resample_speed(x, factor)
    return pitch_shift(x, SR, 12 * np.log2(factor))


def rescue(cat: MemoryCatalog, clip: np.ndarray, scales: tuple[float, ...]) -> tuple[float, int]:
    variants = extract_rescaled_query_landmarks(clip, scales)
    queries = [ScaledQuery(s, v.hashes, v.times) for s, v in zip(scales, variants, strict=True)]
    postings = cat.postings(np.concatenate([q.hashes for q in queries]))
    voted = vote_rescue(queries, postings, max_matches=1)
    return voted.scale, (voted.matches[0].track_key if voted.matches else -1)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS_DIR))
    ap.add_argument("--tracks", type=int, default=25)
    ap.add_argument("--negatives", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    corpus = list_corpus(__import__("pathlib").Path(args.corpus))
    step = max(1, len(corpus) // args.tracks)
    chosen = corpus[::step][: args.tracks]
    audio = [decode_audio(t.path, sr=SR) for t in chosen]
    cat = MemoryCatalog(audio)
    n = int(args.seconds * SR)
    print(f"catalog: {len(audio)} tracks; clips of {args.seconds:g} s, one per track\n")
    print("| condition | " + " | ".join(f"error {e:.2%}" for e in ERRORS) + " | shipped grid |")
    print("|---" * (len(ERRORS) + 2) + "|")
    for name, (kind, factor) in CONDITIONS.items():
        hits = np.zeros(len(ERRORS) + 1)
        for key, x in enumerate(audio):
            start = int(rng.uniform(5, max(6.0, x.size / SR - args.seconds * 1.2 - 5)) * SR)
            clip = degrade(x[start : start + int(n * 1.1) + SR], kind, factor)[:n]
            for i, err in enumerate(ERRORS):
                hits[i] += rescue(cat, clip, (factor * (1 + err),))[1] == key
            hits[-1] += rescue(cat, clip, RESCALE_FACTORS)[1] == key
        rates = " | ".join(f"{h / len(audio):.0%}" for h in hits)
        print(f"| {name} | {rates} |", flush=True)
    chosen_paths = {t.path for t in chosen}
    outsiders = [t for t in corpus if t.path not in chosen_paths][: args.negatives]
    plain_fp = rescued_fp = 0
    for t in outsiders:
        x = decode_audio(t.path, sr=SR)
        start = int(rng.uniform(0, max(1.0, x.size / SR - args.seconds - 1)) * SR)
        clip = x[start : start + n]
        lm = extract_landmarks(clip)
        plain_fp += bool(rank_matches(lm.hashes, lm.times, *cat.postings(lm.hashes)))
        rescued_fp += rescue(cat, clip, RESCALE_FACTORS)[1] >= 0
    print(
        f"\nout-of-catalog clips: {len(outsiders)}; matched as they are: {plain_fp}; "
        f"matched by the rescue: {rescued_fp}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
