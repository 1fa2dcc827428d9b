"""Landmarks of a live stream, hop by hop, as the whole recording would give them.

A landmark pairs an anchor peak with one of the next peaks up to ``DT_MAX``
frames later (earmark_fingerprint.landmarks). Whether a frame holds a peak
depends on the spectrogram ``SETTLE_FRAMES`` frames either side (the 2-D max
filter, the local mean and the density rank), and which targets an anchor is
paired with depends only on the peaks up to the target. So a landmark computed
from a stretch of the stream is exactly the one the whole recording gives once
its anchor lies ``SETTLE_FRAMES`` inside the stretch's start and its target
``SETTLE_FRAMES`` before the stretch's end: it is *final*.

Every hop extracts one stretch ending at the newest sample and reaching back
far enough that no landmark still pending at the previous hop loses its
anchor, and keeps the landmarks that became final since that hop. Most
targets are a fraction of a second after their anchor, so most evidence is
usable about a second after it was heard (instead of ``DT_MAX`` frames plus
the settle margin, 2.6 s, for a fixed cut), no landmark is counted twice, and
none is lost. Pure: the extraction itself is the caller's (the fingerprint
service), fed with the windows this module cuts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

# Mirrors of earmark_fingerprint.landmarks (search does not import the
# fingerprint service; tests/unit/test_monitoring.py checks they agree).
SAMPLE_RATE_HZ: Final = 8000
HOP_SAMPLES: Final = 256
N_FFT: Final = 1024
DT_MAX: Final = 63
DT_MASK: Final = 0x3F  # the low 6 bits of a hash are the anchor-target distance
FRAME_RATE_HZ: Final = SAMPLE_RATE_HZ / HOP_SAMPLES

# Frames either side a peak decision reads: density rank over +-8 frames of
# candidates, each judged on a local mean over +-7 frames.
SETTLE_FRAMES: Final = 16
# A hash's distance is rounded from sub-frame peak times (+-1 frame), and the
# query extraction's shifted grids map their times by up to one more frame.
TARGET_SLACK_FRAMES: Final = 2

Int16Array = npt.NDArray[np.int16]
UInt32Array = npt.NDArray[np.uint32]


@dataclass(frozen=True)
class ExtractionWindow:
    """A stretch of the stream to extract landmarks from."""

    samples: Int16Array  # 8 kHz mono PCM
    first_frame: int  # stream frame of the stretch's frame 0 (it starts on a frame boundary)
    # Landmarks with anchor >= min_anchor and anchor + distance <= max_target are final.
    min_anchor: int
    max_target: int


@dataclass(frozen=True)
class HopLandmarks:
    """What one hop adds, times in stream frames.

    ``hashes``/``times`` became final: each is reported once, ever. The tail
    (``tail_hashes``/``tail_times``) is this hop's view of the newest audio,
    whose landmarks may still change: usable as evidence for this hop only,
    since the next hop reports them again (final or still in its tail).
    """

    hashes: UInt32Array
    times: UInt32Array
    tail_hashes: UInt32Array
    tail_times: UInt32Array


def _by_time(h: UInt32Array, t: npt.NDArray[np.int64]) -> tuple[UInt32Array, UInt32Array]:
    order = np.argsort(t, kind="stable")
    return h[order], t[order].astype(np.uint32)


class LiveLandmarks:
    """Cuts a growing 8 kHz stream into extraction windows and keeps the new, final landmarks.

    ``push`` audio, and whenever ``ready()`` take a ``window()``, extract it
    and pass the result to ``accept``, which returns the landmarks (stream
    frame times) that became final, and the tail that is not final yet.
    ``window(flush=True)`` at the end of the stream finalises everything left.
    """

    def __init__(self, hop_s: float = 1.0) -> None:
        if hop_s <= 0:
            raise ValueError(f"hop_s must be positive, got {hop_s}")
        self._hop_samples = max(HOP_SAMPLES, round(hop_s * SAMPLE_RATE_HZ))
        self._chunks: list[Int16Array] = []
        self._buffer: Int16Array = np.zeros(0, dtype=np.int16)
        self._buffer_start = 0  # stream sample index of _buffer[0]; a multiple of HOP_SAMPLES
        self._total = 0
        self._cut_at = 0  # total samples when the last window was cut
        self._emitted_min_anchor = 0
        self._emitted_max_target = -1  # nothing emitted yet
        self._next_first_frame = 0
        self._settled = -1
        self._flushed = False

    @property
    def total_samples(self) -> int:
        return self._total

    @property
    def seconds(self) -> float:
        return self._total / SAMPLE_RATE_HZ

    @property
    def settled_frame(self) -> int:
        """Stream frame up to which every peak is decided, as of the last window."""
        return self._settled

    def push(self, pcm: Int16Array) -> None:
        if pcm.size:
            self._chunks.append(np.asarray(pcm, dtype=np.int16))
            self._total += int(pcm.size)

    def ready(self) -> bool:
        return self._total - self._cut_at >= self._hop_samples and self._total >= N_FFT

    def window(self, *, flush: bool = False) -> ExtractionWindow | None:
        """The next stretch to extract, or None when there is nothing new."""
        if self._total < N_FFT or self._flushed:
            return None
        if self._total == self._cut_at and not flush:
            return None
        if self._chunks:
            self._buffer = np.concatenate([self._buffer, *self._chunks])
            self._chunks = []
        last_frame = (self._total - N_FFT) // HOP_SAMPLES
        first = self._next_first_frame
        skip = first * HOP_SAMPLES - self._buffer_start
        samples = self._buffer[skip:]
        self._cut_at = self._total
        self._flushed = flush
        self._settled = last_frame if flush else last_frame - SETTLE_FRAMES
        # The stream's own start is an edge the whole recording shares, not a cut.
        min_anchor = first + SETTLE_FRAMES + 1 if first > 0 else 0
        max_target = (1 << 62) if flush else last_frame - SETTLE_FRAMES - TARGET_SLACK_FRAMES
        # Anchors still pending after this window lie above max_target - DT_MAX; the
        # next window must keep SETTLE_FRAMES (+1) before the lowest of them.
        # Even, because the query extraction rounds its half-frame grid to even
        # frames: an odd start would move those landmarks by one frame.
        reach_back = last_frame - 2 * SETTLE_FRAMES - TARGET_SLACK_FRAMES - DT_MAX - 1
        self._next_first_frame = max(first, reach_back - reach_back % 2)
        return ExtractionWindow(
            samples=samples, first_frame=first, min_anchor=min_anchor, max_target=max_target
        )

    def accept(
        self, window: ExtractionWindow, hashes: UInt32Array, times: UInt32Array
    ) -> HopLandmarks:
        """The window's landmarks (times relative to it) that became final, in stream
        frames, and the newest ones that are not final yet (the tail)."""
        h = np.asarray(hashes, dtype=np.uint32)
        t = np.asarray(times, dtype=np.int64) + window.first_frame
        target = t + (h & DT_MASK).astype(np.int64)
        inside = t >= window.min_anchor
        final = inside & (target <= window.max_target)
        before = (t >= self._emitted_min_anchor) & (target <= self._emitted_max_target)
        new = final & ~before
        tail = inside & ~final
        self._emitted_min_anchor = window.min_anchor
        self._emitted_max_target = window.max_target
        self._trim()
        return HopLandmarks(*_by_time(h[new], t[new]), *_by_time(h[tail], t[tail]))

    def _trim(self) -> None:
        """Drop samples no later window will reach back to."""
        keep_from = self._next_first_frame * HOP_SAMPLES
        drop = keep_from - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._buffer_start = keep_from
