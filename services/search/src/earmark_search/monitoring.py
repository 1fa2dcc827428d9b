"""Live monitoring: which catalog track plays on a stream, decided hop by hop.

`StreamTracker` is fed, every hop, the stream's newly final landmarks with
their catalog postings (one lookup per hop). It keeps the last ``window_s``
seconds of them and matches that window the way `scan` matches one of its
windows (`window_matches`: the offset vote of `rank_matches`, a second track
confirmed alone inside a crossfade, at least MIN_DISTINCT_TIMES voting
moments). A (track, alignment) found this way is a *candidate*; hysteresis
turns candidates into plays and keeps one song from flickering into many:

- STARTED once a candidate is confirmed by ``confirmations`` windows that each
  bring new votes at the same alignment (the same chance coincidence stays in
  the window for several hops, so re-confirming old votes proves nothing), or
  at once when one window is overwhelming (``strong_score``). The start is the
  first voted landmark, not the moment of recognition.
- A play absorbs every later confirmation of its track, however weak (a
  track has one play at a time; music that repeats a bar also aligns one
  period off, and the window's best alignment is taken as the play's); it
  reports PLAYING every ``report_interval_s``.
- ENDED when it has not been confirmed for ``end_gap_s`` of stream, or for
  ``handover_gap_s`` once another track has been confirmed after it (the next
  song has begun); its end is the last voted landmark.
- UNKNOWN when audible audio (landmarks at a music-like density) has matched
  nothing for ``unknown_after_s``, repeated every ``report_interval_s``.

Pure and synchronous: the gRPC adapter is `earmark_search.live`.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from .scanning import (
    ALIGNMENT_TOLERANCE_FRAMES,
    MIN_DISTINCT_TIMES,
    Postings,
    aligned_times,
    window_matches,
)

# Fewer landmarks than this in a window cannot pass rank_matches' minimum anyway.
_MIN_WINDOW_LANDMARKS: Final = 10
_EMPTY: Final = np.zeros(0, dtype=np.int64)


class EventKind(enum.Enum):
    STARTED = "STARTED"
    PLAYING = "PLAYING"
    ENDED = "ENDED"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class TrackerSettings:
    window_s: float = 8.0
    confirmations: int = 2
    strong_score: int = 60
    end_gap_s: float = 8.0
    handover_gap_s: float = 3.0
    unknown_after_s: float = 10.0
    report_interval_s: float = 10.0
    # Landmarks per second above which a stretch counts as audible (music runs at
    # 150-300; silence and room tone give none).
    audible_landmarks_per_s: float = 20.0
    # A pause longer than this (silence) ends an unknown stretch; speech pauses are shorter.
    unknown_pause_s: float = 3.0

    def __post_init__(self) -> None:
        if not 2.0 <= self.window_s <= 60.0:
            raise ValueError(f"window_s must be within 2..60 s, got {self.window_s}")
        if self.confirmations < 1:
            raise ValueError(f"confirmations must be >= 1, got {self.confirmations}")
        if self.report_interval_s <= 0 or self.end_gap_s <= 0 or self.handover_gap_s <= 0:
            raise ValueError("report_interval_s, end_gap_s and handover_gap_s must be positive")


@dataclass(frozen=True)
class TrackerEvent:
    kind: EventKind
    play: int  # numbers the plays (and unknown stretches) of the stream from 1
    start_frame: int
    end_frame: int
    track_key: int = 0  # 0 for UNKNOWN
    alignment: int = 0  # track frame - stream frame
    score: int = 0
    confidence: float = 0.0


@dataclass
class _Play:
    number: int
    track_key: int
    alignment: int
    first_frame: int
    last_frame: int  # latest voted landmark
    score: int
    confidence: float
    confirmations: int = 1
    seen_at: int = 0  # stream frame of the hop that last confirmed it
    reported_at: int = 0

    def takes(self, track_key: int, alignment: int) -> bool:
        return (
            track_key == self.track_key
            and abs(alignment - self.alignment) <= ALIGNMENT_TOLERANCE_FRAMES
        )

    def event(self, kind: EventKind) -> TrackerEvent:
        return TrackerEvent(
            kind=kind,
            play=self.number,
            start_frame=self.first_frame,
            end_frame=self.last_frame,
            track_key=self.track_key,
            alignment=self.alignment,
            score=self.score,
            confidence=self.confidence,
        )


@dataclass
class _Batch:
    hashes: npt.NDArray[np.int64]
    times: npt.NDArray[np.int64]
    postings: Postings


@dataclass
class StreamTracker:
    frame_rate_hz: float
    settings: TrackerSettings = field(default_factory=TrackerSettings)
    _batches: deque[_Batch] = field(default_factory=deque)
    _tail: _Batch = field(default_factory=lambda: _Batch(_EMPTY, _EMPTY, (_EMPTY, _EMPTY, _EMPTY)))
    _playing: list[_Play] = field(default_factory=list)
    _candidates: list[_Play] = field(default_factory=list)
    _ended: list[_Play] = field(default_factory=list)  # still inside the window
    _plays: int = 0
    _now: int = 0
    _last_end: int = 0  # where the latest play ended
    _unknown_since: int | None = None
    _unknown_play: int = 0
    _unknown_reported: int | None = None
    _last_audible: int = -(1 << 40)
    _audible_since: int = 0

    def _frames(self, seconds: float) -> int:
        return round(seconds * self.frame_rate_hz)

    @property
    def playing(self) -> list[TrackerEvent]:
        """The plays under way, as PLAYING events (for a caller that asks now)."""
        return [p.event(EventKind.PLAYING) for p in self._playing]

    def update(
        self,
        hashes: npt.ArrayLike,
        times: npt.ArrayLike,
        postings: Postings,
        settled_frame: int,
        tail_hashes: npt.ArrayLike = (),
        tail_times: npt.ArrayLike = (),
    ) -> list[TrackerEvent]:
        """Take one hop's newly final landmarks (and its tail of not yet final ones,
        evidence for this hop only) with their postings; the events it decides.

        ``settled_frame`` is the stream frame up to which the landmarks are
        complete (the stream's "now" for gaps and reports).
        """
        h = np.asarray(hashes).astype(np.int64)
        t = np.asarray(times).astype(np.int64)
        previous, self._now = self._now, max(self._now, settled_frame)
        if h.size:
            own = np.isin(postings[0], h)
            kept: Postings = (postings[0][own], postings[1][own], postings[2][own])
            self._batches.append(_Batch(h, t, kept))
        th = np.asarray(tail_hashes).astype(np.int64)
        self._tail = _Batch(th, np.asarray(tail_times).astype(np.int64), postings)
        horizon = self._now - self._frames(self.settings.window_s)
        while self._batches and int(self._batches[0].times.max()) < horizon:
            self._batches.popleft()
        events: list[TrackerEvent] = []
        for track_key, alignment, score, confidence, first, last in self._matches(horizon):
            events += self._confirm(track_key, alignment, score, confidence, first, last)
        events += self._end_plays()
        events += self._reports()
        audible = (
            h.size
            >= self.settings.audible_landmarks_per_s
            * max(self._now - previous, 1)
            / self.frame_rate_hz
        )
        events += self._unknown(audible, previous)
        horizon_candidates = self._now - self._frames(self.settings.window_s)
        self._candidates = [c for c in self._candidates if c.seen_at >= horizon_candidates]
        self._ended = [p for p in self._ended if p.last_frame >= horizon_candidates]
        return events

    def finish(self) -> list[TrackerEvent]:
        """End of the stream: every play under way ends where it was last heard."""
        ended = [p.event(EventKind.ENDED) for p in self._playing]
        self._playing = []
        self._candidates = []
        return ended

    def _matches(self, horizon: int) -> list[tuple[int, int, int, float, int, int]]:
        batches = [*self._batches, *([self._tail] if self._tail.hashes.size else [])]
        if not batches:
            return []
        wh = np.concatenate([b.hashes for b in batches])
        wt = np.concatenate([b.times for b in batches])
        keep = wt >= horizon
        wh, wt = wh[keep], wt[keep]
        if wh.size < _MIN_WINDOW_LANDMARKS:
            return []
        postings: Postings = tuple(  # type: ignore[assignment]
            np.concatenate([b.postings[i] for b in batches]) for i in range(3)
        )
        found = []
        for track_key, alignment, score, confidence in window_matches(wh, wt, postings):
            voted = aligned_times(wh, wt, postings, track_key, alignment)
            if voted.size >= MIN_DISTINCT_TIMES:
                found.append(
                    (track_key, alignment, score, confidence, int(voted[0]), int(voted[-1]))
                )
        return found

    def _confirm(
        self, track_key: int, alignment: int, score: int, confidence: float, first: int, last: int
    ) -> list[TrackerEvent]:
        for play in self._playing:
            if play.track_key == track_key:
                # One play per track at a time: music that repeats a bar or a phrase
                # also aligns one period off, and early windows may prefer that
                # alignment. The window's best alignment is taken as the play's.
                play.alignment = alignment
                play.last_frame = max(play.last_frame, last)
                play.score = max(play.score, score)
                play.confidence = max(play.confidence, confidence)
                play.seen_at = self._now
                return []
        for ended in self._ended:
            if ended.track_key == track_key:
                if last <= ended.last_frame:  # the ended play's own votes, still in the window
                    return []
                first = max(first, ended.last_frame + 1)
        candidate = next((c for c in self._candidates if c.takes(track_key, alignment)), None)
        if candidate is None:
            candidate = _Play(0, track_key, alignment, first, last, score, confidence)
            candidate.seen_at = self._now
            self._candidates.append(candidate)
        elif last > candidate.last_frame:  # new votes at the same alignment
            candidate.confirmations += 1
            candidate.first_frame = min(candidate.first_frame, first)
            candidate.last_frame = last
            candidate.score = max(candidate.score, score)
            candidate.confidence = max(candidate.confidence, confidence)
            candidate.seen_at = self._now
        if (
            candidate.confirmations < self.settings.confirmations
            and candidate.score < self.settings.strong_score
        ):
            return []
        self._candidates.remove(candidate)
        self._plays += 1
        candidate.number = self._plays
        candidate.seen_at = candidate.reported_at = self._now
        self._playing.append(candidate)
        self._unknown_since = None
        return [candidate.event(EventKind.STARTED)]

    def _end_plays(self) -> list[TrackerEvent]:
        events = []
        end_gap = self._frames(self.settings.end_gap_s)
        handover_gap = self._frames(self.settings.handover_gap_s)
        for play in list(self._playing):
            gap = self._now - play.last_frame
            followed = any(
                other is not play and other.last_frame > play.last_frame for other in self._playing
            )
            if gap > end_gap or (followed and gap > handover_gap):
                self._playing.remove(play)
                self._ended.append(play)
                self._last_end = max(self._last_end, play.last_frame)
                events.append(play.event(EventKind.ENDED))
        return events

    def _reports(self) -> list[TrackerEvent]:
        interval = self._frames(self.settings.report_interval_s)
        events = []
        for play in self._playing:
            if self._now - play.reported_at >= interval:
                play.reported_at = self._now
                events.append(play.event(EventKind.PLAYING))
        return events

    def _unknown(self, audible: bool, previous: int) -> list[TrackerEvent]:
        if audible:
            if self._now - self._last_audible > self._frames(self.settings.unknown_pause_s):
                self._audible_since = previous  # audio again after a pause
            self._last_audible = self._now
        pause = self._now - self._last_audible > self._frames(self.settings.unknown_pause_s)
        if self._playing or pause:
            self._unknown_since = None
            return []
        if self._candidates:  # something is being recognised: not unknown yet
            return []
        if self._unknown_since is None:
            if not audible:
                return []
            # Unmatched since the last play ended, unless a pause came between.
            self._unknown_since = max(self._audible_since, self._last_end)
            self._unknown_reported = None
            self._unknown_play = 0
        since = self._unknown_since
        if self._now - since < self._frames(self.settings.unknown_after_s):
            return []
        interval = self._frames(self.settings.report_interval_s)
        if self._unknown_reported is not None and self._now - self._unknown_reported < interval:
            return []
        if not self._unknown_play:  # numbered once reported, so play numbers have no holes
            self._plays += 1
            self._unknown_play = self._plays
        self._unknown_reported = self._now
        return [TrackerEvent(EventKind.UNKNOWN, self._unknown_play, since, self._now)]
