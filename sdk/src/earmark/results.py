"""Plain result types the SDK returns, so callers need not touch protobuf."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from google.protobuf import timestamp_pb2

from earmark.v1 import common_pb2, monitor_pb2, search_pb2

STATE_NAMES = {
    common_pb2.SUBMISSION_STATE_RECEIVED: "RECEIVED",
    common_pb2.SUBMISSION_STATE_FINGERPRINTED: "FINGERPRINTED",
    common_pb2.SUBMISSION_STATE_INDEXED: "INDEXED",
    common_pb2.SUBMISSION_STATE_REJECTED: "REJECTED",
    common_pb2.SUBMISSION_STATE_DELETED: "DELETED",
}
FINAL_STATES = {"INDEXED", "REJECTED", "DELETED"}


@dataclass(frozen=True)
class Submission:
    submission_id: str
    external_id: str
    state: str
    track_id: str
    rejection_code: str
    rejection_message: str
    duration_s: float
    duplicate_of: str = ""  # for DUPLICATE rejections: the catalog track it repeats
    source_sha256: str = ""
    stages: tuple[tuple[str, float], ...] = ()  # (stage, unix time) in order

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @classmethod
    def from_proto(cls, sub: common_pb2.Submission) -> Submission:
        rejected = sub.state == common_pb2.SUBMISSION_STATE_REJECTED
        return cls(
            submission_id=sub.submission_id,
            external_id=sub.external_id,
            state=STATE_NAMES.get(sub.state, "UNSPECIFIED"),
            track_id=sub.track_id,
            rejection_code=(
                common_pb2.RejectionCode.Name(sub.rejection.code).removeprefix("REJECTION_CODE_")
                if rejected
                else ""
            ),
            rejection_message=sub.rejection.message if rejected else "",
            duration_s=sub.duration_s,
            duplicate_of=sub.rejection.duplicate_of_track_id if rejected else "",
            source_sha256=sub.source_sha256,
            stages=tuple((st.stage, st.at.ToNanoseconds() / 1e9) for st in sub.stages),
        )


@dataclass(frozen=True)
class Track:
    track_id: str
    external_id: str
    title: str
    artist: str
    album: str
    duration_s: float
    landmark_count: int
    renditions: tuple[str, ...] = ()

    @classmethod
    def from_proto(cls, t: common_pb2.Track) -> Track:
        return cls(
            track_id=t.track_id,
            external_id=t.external_id,
            title=t.metadata.title,
            artist=t.metadata.artist,
            album=t.metadata.album,
            duration_s=t.duration_s,
            landmark_count=t.landmark_count,
            renditions=tuple(r.name for r in t.renditions),
        )


@dataclass(frozen=True)
class Match:
    track_id: str
    external_id: str
    title: str
    artist: str
    offset_s: float
    score: float
    confidence: float
    # 1.0 as catalogued; 1.03 when the clip plays 3 % fast or is pitched up.
    frequency_scale: float = 1.0
    # Which identifiers found it: "landmarks", "neural" or both.
    methods: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# IdentifyRequest.method by name, for the SDK and the CLI.
IDENTIFY_METHODS: dict[str, search_pb2.IdentifyMethod] = {
    "auto": search_pb2.IDENTIFY_METHOD_UNSPECIFIED,
    "landmarks": search_pb2.IDENTIFY_METHOD_LANDMARKS,
    "neural": search_pb2.IDENTIFY_METHOD_NEURAL,
    "fused": search_pb2.IDENTIFY_METHOD_FUSED,
}
_METHOD_NAMES = {v: k for k, v in IDENTIFY_METHODS.items()}


def identify_method(name: str) -> search_pb2.IdentifyMethod:
    try:
        return IDENTIFY_METHODS[name]
    except KeyError:
        known = ", ".join(IDENTIFY_METHODS)
        raise ValueError(f"method must be one of {known}, got {name!r}") from None


@dataclass(frozen=True)
class Identification:
    matches: list[Match]
    query_duration_s: float
    latency_ms: float  # measured by the client: the whole call
    server_ms: float  # measured by search: extraction, lookup and vote

    @property
    def match(self) -> Match | None:
        return self.matches[0] if self.matches else None

    @classmethod
    def from_proto(cls, reply: search_pb2.IdentifyResponse, latency_ms: float) -> Identification:
        return cls(
            matches=[
                Match(
                    track_id=m.track.track_id,
                    external_id=m.track.external_id,
                    title=m.track.metadata.title,
                    artist=m.track.metadata.artist,
                    offset_s=round(m.offset_s, 3),
                    score=m.score,
                    confidence=round(m.confidence, 4),
                    frequency_scale=round(m.frequency_scale or 1.0, 4),
                    methods=tuple(_METHOD_NAMES.get(x, "?") for x in m.methods),
                )
                for m in reply.matches
            ],
            query_duration_s=reply.query_duration_s,
            latency_ms=latency_ms,
            server_ms=reply.timings.total_ms,
        )


@dataclass(frozen=True)
class TimelineEntry:
    track_id: str
    external_id: str
    title: str
    artist: str
    start_s: float
    end_s: float
    track_offset_s: float
    confidence: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_proto(cls, e: search_pb2.TimelineEntry) -> TimelineEntry:
        return cls(
            track_id=e.track.track_id,
            external_id=e.track.external_id,
            title=e.track.metadata.title,
            artist=e.track.metadata.artist,
            start_s=round(e.start_s, 2),
            end_s=round(e.end_s, 2),
            track_offset_s=round(e.track_offset_s, 2),
            confidence=round(e.confidence, 4),
        )


MONITOR_EVENT_TYPES = {
    search_pb2.MONITOR_EVENT_TYPE_STARTED: "STARTED",
    search_pb2.MONITOR_EVENT_TYPE_PLAYING: "PLAYING",
    search_pb2.MONITOR_EVENT_TYPE_ENDED: "ENDED",
    search_pb2.MONITOR_EVENT_TYPE_UNKNOWN: "UNKNOWN",
}


def _unix(stamp: timestamp_pb2.Timestamp) -> float | None:
    """Seconds since the epoch; None for an unset timestamp."""
    return stamp.ToNanoseconds() / 1e9 if stamp.seconds or stamp.nanos else None


@dataclass(frozen=True)
class MonitorEvent:
    """What a live monitor heard; times are seconds of stream audio since the call began."""

    type: str  # STARTED, PLAYING, ENDED or UNKNOWN
    play: int  # the STARTED, PLAYING and ENDED events of one play share it
    start_s: float
    end_s: float
    stream_time_s: float  # audio received when the event was decided
    track_id: str = ""  # empty for UNKNOWN
    external_id: str = ""
    title: str = ""
    artist: str = ""
    track_offset_s: float = 0.0  # position in the track at start_s
    confidence: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_proto(cls, e: search_pb2.MonitorEvent) -> MonitorEvent:
        return cls(
            type=MONITOR_EVENT_TYPES.get(e.type, "UNSPECIFIED"),
            play=e.play,
            start_s=round(e.start_s, 2),
            end_s=round(e.end_s, 2),
            stream_time_s=round(e.stream_time_s, 2),
            track_id=e.track.track_id,
            external_id=e.track.external_id,
            title=e.track.metadata.title,
            artist=e.track.metadata.artist,
            track_offset_s=round(e.track_offset_s, 2),
            confidence=round(e.confidence, 4),
        )


@dataclass(frozen=True)
class MonitoredStream:
    """A stream source the server-side monitors watch."""

    name: str
    url: str
    registered_at: float | None  # unix time
    watched_by: str  # the monitor replica watching it; empty while it waits for one
    heard_at: float | None  # when audio from it last arrived
    last_error: str

    @classmethod
    def from_proto(cls, s: monitor_pb2.MonitoredStream) -> MonitoredStream:
        return cls(
            name=s.name,
            url=s.url,
            registered_at=_unix(s.registered_at),
            watched_by=s.watched_by,
            heard_at=_unix(s.heard_at),
            last_error=s.last_error,
        )


@dataclass(frozen=True)
class Play:
    """One catalog track heard on a monitored stream, from the play log."""

    play_id: str
    stream_name: str
    track_id: str
    external_id: str
    title: str
    artist: str
    started_at: float  # unix time
    ended_at: float  # the end, or the last time heard while still playing
    track_offset_s: float
    confidence: float
    playing: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_proto(cls, p: monitor_pb2.Play) -> Play:
        return cls(
            play_id=p.play_id,
            stream_name=p.stream_name,
            track_id=p.track.track_id,
            external_id=p.track.external_id,
            title=p.track.metadata.title,
            artist=p.track.metadata.artist,
            started_at=p.started_at.ToNanoseconds() / 1e9,
            ended_at=p.ended_at.ToNanoseconds() / 1e9,
            track_offset_s=round(p.track_offset_s, 2),
            confidence=round(p.confidence, 4),
            playing=p.playing,
        )
