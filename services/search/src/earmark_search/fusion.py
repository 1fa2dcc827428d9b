"""Fusing the two identifiers: landmark votes and neural segment search.

Each method proposes (track, offset, confidence). When both name the same
track at offsets within `AGREEMENT_S`, the answer is one match found by both,
with the confidence of two independent witnesses, 1 - (1 - a)(1 - b). Otherwise
every proposal stands on its own, and the ranking is by confidence: a clip too
short or too degraded for landmarks is answered by the neural side, and a
sped-up clip (rescued landmarks) by the landmark side.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

from .matching import MatchCandidate
from .vector_matching import VectorMatch

# Neural offsets come from a 0.5 s catalog grid; landmark offsets are exact to a
# frame. Two answers this close are the same alignment.
AGREEMENT_S: Final = 1.0
# A landmark match this confident is not worth a neural search (AUTO mode).
CERTAIN: Final = 0.95
# A landmark match below this confidence stands only if the neural search, when
# it ran, confirms it. Replayed on the corpus benchmark's queries with the
# landmark decision of docs/landmarks.md, 0.6 kept fused false positives at
# 5/1190 while fused top-1 stayed >= the better method in every cell; 0.5 let 6
# through, 0.7 lost babble 0 dB clips the neural side cannot confirm. With peak
# verification the benchmark measures 6/1190 (docs/neural.md, "Targets").
UNCONFIRMED_MIN: Final = 0.6

LANDMARKS: Final = "landmarks"
NEURAL: Final = "neural"


@dataclass(frozen=True)
class FusedMatch:
    track_key: int
    offset_s: float
    score: float  # landmark votes when landmarks found it, else the neural score
    confidence: float
    frequency_scale: float
    methods: tuple[str, ...]


def from_landmarks(
    matches: Sequence[MatchCandidate], frame_s: float, frequency_scale: float = 1.0
) -> list[FusedMatch]:
    return [
        FusedMatch(
            m.track_key,
            m.offset_frames * frame_s,
            float(m.score),
            m.confidence,
            frequency_scale,
            (LANDMARKS,),
        )
        for m in matches
    ]


def from_neural(matches: Sequence[VectorMatch]) -> list[FusedMatch]:
    return [
        FusedMatch(m.track_key, m.offset_s, m.score, m.confidence, m.frequency_scale, (NEURAL,))
        for m in matches
    ]


def fuse(
    landmark: Sequence[FusedMatch],
    neural: Sequence[FusedMatch],
    max_matches: int,
    *,
    neural_ran: bool = False,
    without_vectors: Collection[int] = (),
) -> list[FusedMatch]:
    """One ranked list from both methods' matches, agreements merged.

    `neural_ran`: the neural search was asked (its silence is then evidence),
    so a weak landmark match it does not confirm is dropped, unless its track
    is in `without_vectors` (nothing the neural search could have found).
    """
    merged: list[FusedMatch] = []
    unused = list(neural)
    for lm in landmark:
        twin = next(
            (
                n
                for n in unused
                if n.track_key == lm.track_key and abs(n.offset_s - lm.offset_s) <= AGREEMENT_S
            ),
            None,
        )
        if twin is None:
            unconfirmable = lm.track_key in without_vectors
            if unconfirmable or not (neural_ran and lm.confidence < UNCONFIRMED_MIN):
                merged.append(lm)
            continue
        unused.remove(twin)
        merged.append(
            FusedMatch(
                lm.track_key,
                lm.offset_s,
                lm.score,
                1.0 - (1.0 - lm.confidence) * (1.0 - twin.confidence),
                lm.frequency_scale,
                (LANDMARKS, NEURAL),
            )
        )
    merged.extend(unused)
    merged.sort(key=lambda m: (m.confidence, len(m.methods)), reverse=True)
    # One entry per track: a second alignment of a track already listed is noise.
    seen: set[int] = set()
    out = []
    for m in merged:
        if m.track_key not in seen:
            seen.add(m.track_key)
            out.append(m)
    return out[:max_matches]
