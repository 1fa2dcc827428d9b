"""Plain result types the SDK returns, so callers need not touch protobuf."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from earmark.v1 import common_pb2, search_pb2

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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
