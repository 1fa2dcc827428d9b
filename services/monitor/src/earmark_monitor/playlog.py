"""What a monitor's events mean for the play log: pure rules, no I/O.

Monitor events give times in seconds of the connection's stream. The watcher
maps them to the wall clock with the moment the connection's first sample
arrived (`StreamClock`). A play is then (stream, track, started_at,
ended_at, offset in the track, confidence), and two observations are the same
play when they agree on where the track's own time 0 falls on the wall clock
(`track_zero`): a replica that takes a stream over mid-song, or a reconnect
after the source dropped, sees the song continue at the same track_zero and
extends the logged play instead of logging a second one. A song played again
later has another track_zero.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Final

from earmark.v1 import search_pb2

# Two connections to one source place a stream position up to this far apart
# on the wall clock (the source's own buffering, a burst on connect).
CONTINUATION_TOLERANCE_S: Final = 10.0
# A takeover or a reconnect picks a play up again within this.
CONTINUATION_GAP_S: Final = 120.0
STREAM_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class StreamClock:
    """Stream seconds of one connection to the wall clock."""

    origin_unix: float  # when the connection's first sample arrived

    def at(self, stream_s: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.origin_unix + stream_s, dt.UTC)


@dataclass(frozen=True)
class PlayRecord:
    """One play as an event describes it, on the wall clock."""

    track_id: str
    external_id: str
    title: str
    artist: str
    duration_s: float
    started_at: dt.datetime
    ended_at: dt.datetime
    track_offset_s: float
    confidence: float
    playing: bool

    @property
    def track_zero(self) -> dt.datetime:
        return self.started_at - dt.timedelta(seconds=self.track_offset_s)


@dataclass(frozen=True)
class LoggedPlay:
    play_id: str
    track_id: str
    track_zero: dt.datetime
    ended_at: dt.datetime


def record_of(event: search_pb2.MonitorEvent, clock: StreamClock) -> PlayRecord:
    track = event.track
    return PlayRecord(
        track_id=track.track_id,
        external_id=track.external_id,
        title=track.metadata.title,
        artist=track.metadata.artist,
        duration_s=track.duration_s,
        started_at=clock.at(event.start_s),
        ended_at=clock.at(max(event.end_s, event.start_s)),
        track_offset_s=event.track_offset_s,
        confidence=event.confidence,
        playing=event.type != search_pb2.MONITOR_EVENT_TYPE_ENDED,
    )


def continues(logged: LoggedPlay, record: PlayRecord) -> bool:
    """Is `record` the logged play going on (seen by another watcher or connection)?"""
    return (
        logged.track_id == record.track_id
        and abs((logged.track_zero - record.track_zero).total_seconds()) <= CONTINUATION_TOLERANCE_S
        and record.started_at - logged.ended_at <= dt.timedelta(seconds=CONTINUATION_GAP_S)
    )


def stream_subject(name: str) -> str:
    """NATS subject of a stream's events."""
    if not STREAM_NAME.match(name):
        raise ValueError(f"invalid stream name {name!r}")
    return f"earmark.monitor.{name}"
