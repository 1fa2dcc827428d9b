"""Exact rescoring of a vote's best candidate by spectral-peak coincidence.

The offset vote counts *pairs* of peaks (landmarks), so a noisy clip whose
peaks survive with probability p keeps only ~p² of its landmarks: a true match
in noise or reverb can end up with a dozen votes, no more than a chance
alignment gets. Its *peaks* survive with p, though. So a candidate that the
vote ranks first but cannot accept is checked peak by peak, the way
acoustid-server rescores its inverted-index candidates exactly: how many of the
clip's peaks does the track have at the voted alignment (within +-1 frame and
+-1 bin), against the most it has at alignments elsewhere in the same track.
Music repeats itself, so the track's own best chance alignment, not a global
rate, is the bar (docs/landmarks.md, "Peak verification").

Pure numpy; peaks travel and are stored as sorted uint32 keys
``frame << PEAK_BIN_BITS | bin``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

PEAK_BIN_BITS: Final = 10  # FFT bins are < 512 (landmarks.MAX_BIN)
_BIN_MASK: Final = (1 << PEAK_BIN_BITS) - 1
# A clip's frame grid is offset from the track's by up to half a hop, and a
# peak's bin moves by one with a few Hz of detuning or a codec.
TOLERANCE_FRAMES: Final = 1
TOLERANCE_BINS: Final = 1
# Alignments elsewhere in the track that the chance level is taken from, and
# how far from the voted one they must be (~1 s: beyond the smear of a match).
CHANCE_ALIGNMENTS: Final = 64
CHANCE_EXCLUSION_FRAMES: Final = 32

UInt32Array = npt.NDArray[np.uint32]
IntArray = npt.NDArray[np.int64]


def pack_peaks(frames: npt.ArrayLike, bins: npt.ArrayLike) -> UInt32Array:
    """Sorted peak keys; raises ValueError on mismatched or out-of-range input."""
    t = np.asarray(frames, dtype=np.int64).ravel()
    f = np.asarray(bins, dtype=np.int64).ravel()
    if t.shape != f.shape:
        raise ValueError(f"peak frames and bins differ in length: {t.size} != {f.size}")
    if t.size and (f.min() < 0 or f.max() > _BIN_MASK or t.min() < 0 or t.max() >= 1 << 22):
        raise ValueError("peak frame or bin out of range")
    keys: UInt32Array = np.sort((t << PEAK_BIN_BITS) | f).astype(np.uint32)
    return keys


@dataclass(frozen=True)
class PeakCheck:
    hits: int  # clip peaks the track has at the voted alignment
    chance: int  # the most it has at any of the other alignments tried

    def passes(self, min_ratio: float) -> bool:
        return self.hits >= min_ratio * max(self.chance, 1)


def _coincidences(
    frames: IntArray, bins: IntArray, reference: IntArray, offsets: IntArray
) -> IntArray:
    """For each offset, how many clip peaks have a reference peak within tolerance."""
    hit = np.zeros((offsets.size, frames.size), dtype=bool)
    for shift in range(-TOLERANCE_FRAMES, TOLERANCE_FRAMES + 1):
        centre = ((frames[None, :] + offsets[:, None] + shift) << PEAK_BIN_BITS) | bins[None, :]
        # Bins never exceed _BIN_MASK - 1, so +-1 bin cannot reach the next frame's keys.
        lo = np.searchsorted(reference, centre - TOLERANCE_BINS, side="left")
        hi = np.searchsorted(reference, centre + TOLERANCE_BINS, side="right")
        hit |= hi > lo
    counts: IntArray = np.count_nonzero(hit, axis=1).astype(np.int64)
    return counts


def chance_offsets(clip_frames: int, track_frames: int, aligned: int) -> IntArray:
    """Evenly spread alignments of the clip over the track, away from `aligned`."""
    candidates = np.linspace(-clip_frames + 1, max(track_frames - 1, 0), CHANCE_ALIGNMENTS + 2)
    offsets = np.unique(np.rint(candidates).astype(np.int64))
    keep = np.abs(offsets - aligned) > CHANCE_EXCLUSION_FRAMES
    out: IntArray = offsets[keep]
    return out


def check_alignment(
    clip_frames: npt.ArrayLike,
    clip_bins: npt.ArrayLike,
    track_peaks: UInt32Array,
    offset_frames: int,
) -> PeakCheck:
    """How well the clip's peaks line up with the track's at `offset_frames`.

    `offset_frames` is track time minus clip time, as the vote reports it.
    """
    t = np.asarray(clip_frames, dtype=np.int64).ravel()
    f = np.asarray(clip_bins, dtype=np.int64).ravel()
    if t.shape != f.shape:
        raise ValueError(f"clip peak frames and bins differ in length: {t.size} != {f.size}")
    reference = np.asarray(track_peaks, dtype=np.int64)
    if t.size == 0 or reference.size == 0:
        return PeakCheck(0, 0)
    track_frames = int(reference[-1] >> PEAK_BIN_BITS) + 1
    span = int(t.max() - t.min()) + 1
    others = chance_offsets(span, track_frames, offset_frames)
    counts = _coincidences(t, f, reference, np.concatenate([[offset_frames], others]))
    return PeakCheck(int(counts[0]), int(counts[1:].max()) if others.size else 0)
