"""Synchronous Earmark client."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from google.protobuf import timestamp_pb2

from earmark.v1 import (
    common_pb2,
    features_pb2,
    features_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)

from . import _auth
from ._requests import (
    AudioSource,
    audio_input,
    read_audio,
    scan_messages,
    upload_messages,
)
from .discovery import resolve
from .results import (
    Identification,
    MonitoredStream,
    MonitorEvent,
    Play,
    Submission,
    TimelineEntry,
    Track,
    identify_method,
)

Moment = dt.datetime | float  # a datetime, or unix time


def monitor_config(stream_name: str, report_interval_s: float) -> search_pb2.MonitorRequest:
    config = search_pb2.MonitorConfig(stream_name=stream_name, report_interval_s=report_interval_s)
    return search_pb2.MonitorRequest(config=config)


def monitor_chunk(
    chunk: bytes, *, sample_rate_hz: int, channels: int, encoded: bool
) -> search_pb2.MonitorRequest:
    """One piece of the stream: s16le PCM, or the next bytes of an encoded stream."""
    if encoded:
        return search_pb2.MonitorRequest(encoded=chunk)
    pcm = common_pb2.PcmAudio(samples=chunk, sample_rate_hz=sample_rate_hz, channels=channels)
    return search_pb2.MonitorRequest(pcm=pcm)


def timestamp(moment: Moment | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    seconds = moment.timestamp() if isinstance(moment, dt.datetime) else float(moment)
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class Earmark:
    """Talks to a running Earmark. Addresses default to $EARMARK_*_ADDR or the embedded stack.

    >>> with Earmark() as em:
    ...     sub = em.upload("song.flac", external_id="cat-001")
    ...     em.wait([sub.submission_id])
    ...     print(em.identify("clip.mp3").match)
    """

    def __init__(
        self,
        *,
        ingest: str | None = None,
        search: str | None = None,
        features: str | None = None,
        monitor: str | None = None,
        timeout_s: float = 60.0,
        api_key: str | None = None,
    ) -> None:
        ends = resolve(ingest=ingest, search=search, features=features)
        key = _auth.api_key(api_key)  # default: $EARMARK_API_KEY
        addrs = (ends.ingest, ends.search, ends.features, monitor or ends.monitor)
        pairs = [_auth.sync_channel(a, key) for a in addrs]
        self._channels = [raw for raw, _ in pairs]
        self._ingest = ingest_pb2_grpc.IngestServiceStub(pairs[0][1])
        self._search = search_pb2_grpc.SearchServiceStub(pairs[1][1])
        self._features = features_pb2_grpc.FeaturesServiceStub(pairs[2][1])
        self._monitor = monitor_pb2_grpc.MonitorServiceStub(pairs[3][1])
        self._timeout = timeout_s

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Earmark:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def upload(
        self,
        source: AudioSource,
        *,
        external_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Submission:
        data = read_audio(source)
        name = Path(source).name if not isinstance(source, bytes) else ""
        ext_id = external_id or (str(source) if not isinstance(source, bytes) else "")
        reply = self._ingest.Upload(
            upload_messages(data, external_id=ext_id, filename=name, metadata=metadata),
            timeout=self._timeout,
        )
        return Submission.from_proto(reply.submission)

    def submission(self, submission_id: str) -> Submission:
        reply = self._ingest.GetSubmission(
            ingest_pb2.GetSubmissionRequest(submission_id=submission_id), timeout=self._timeout
        )
        return Submission.from_proto(reply.submission)

    def submissions(self, submission_ids: Sequence[str]) -> list[Submission]:
        out: list[Submission] = []
        for start in range(0, len(submission_ids), 1000):
            reply = self._ingest.BatchGetSubmissions(
                ingest_pb2.BatchGetSubmissionsRequest(
                    submission_ids=submission_ids[start : start + 1000]
                ),
                timeout=self._timeout,
            )
            out += [Submission.from_proto(s) for s in reply.submissions]
        return out

    def lookup(self, source_sha256: Sequence[str]) -> list[Submission]:
        """Live submissions of files with these SHA-256 digests (at most 1000)."""
        reply = self._ingest.LookupSubmissions(
            ingest_pb2.LookupSubmissionsRequest(source_sha256=list(source_sha256)),
            timeout=self._timeout,
        )
        return [Submission.from_proto(s) for s in reply.submissions]

    def watch(self, submission_id: str, *, timeout_s: float = 3600.0) -> Iterator[Submission]:
        """The submission now and at every change, until every stage has run."""
        stream = self._ingest.WatchSubmission(
            ingest_pb2.WatchSubmissionRequest(submission_id=submission_id), timeout=timeout_s
        )
        for reply in stream:
            yield Submission.from_proto(reply.submission)

    def wait(
        self,
        submission_ids: Sequence[str],
        *,
        timeout_s: float = 600.0,
        on_progress: Callable[[list[Submission]], None] | None = None,
    ) -> list[Submission]:
        """Poll until every submission is INDEXED or REJECTED; raises TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        delay = 0.1
        while True:
            subs = self.submissions(list(submission_ids))
            if on_progress:
                on_progress(subs)
            if len(subs) == len(submission_ids) and all(s.final for s in subs):
                return subs
            if time.monotonic() > deadline:
                pending = [s.submission_id for s in subs if not s.final]
                raise TimeoutError(f"{len(pending)} submissions not final after {timeout_s:.0f} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def identify(
        self, clip: AudioSource, *, max_matches: int = 1, method: str = "auto"
    ) -> Identification:
        """Best catalog matches of a clip; method: auto, landmarks, neural or fused."""
        data = read_audio(clip)
        started = time.perf_counter()
        reply = self._search.Identify(
            search_pb2.IdentifyRequest(
                audio=audio_input(data),
                max_matches=max_matches,
                method=identify_method(method),
            ),
            timeout=self._timeout,
        )
        return Identification.from_proto(reply, (time.perf_counter() - started) * 1000)

    def scan(
        self, recording: AudioSource, *, window_s: float = 0.0, hop_s: float = 0.0
    ) -> list[TimelineEntry]:
        """Which catalog tracks play in a long recording, and when (in order)."""
        reply = self._search.Scan(
            scan_messages(read_audio(recording), window_s=window_s, hop_s=hop_s),
            timeout=max(self._timeout, 600.0),
        )
        return [TimelineEntry.from_proto(e) for e in reply.entries]

    def download(self, track_id: str, rendition: str = "source") -> Iterator[bytes]:
        """The source file, or a rendition by name ("opus-96") or format ("opus"), in chunks."""
        stream = self._ingest.Download(
            ingest_pb2.DownloadRequest(track_id=track_id, rendition=rendition),
            timeout=max(self._timeout, 600.0),
        )
        for part in stream:
            if part.WhichOneof("part") == "chunk":
                yield part.chunk

    def track(self, track_id: str) -> Track:
        reply = self._search.GetTrack(
            search_pb2.GetTrackRequest(track_id=track_id), timeout=self._timeout
        )
        return Track.from_proto(reply.track)

    def tracks(self, page_size: int = 500) -> Iterator[Track]:
        token = ""
        while True:
            reply = self._search.ListTracks(
                search_pb2.ListTracksRequest(page_size=page_size, page_token=token),
                timeout=self._timeout,
            )
            yield from (Track.from_proto(t) for t in reply.tracks)
            token = reply.next_page_token
            if not token:
                return

    def delete_track(self, track_id: str) -> None:
        self._search.DeleteTrack(
            search_pb2.DeleteTrackRequest(track_id=track_id), timeout=self._timeout
        )

    def features(self, track_id: str) -> features_pb2.TrackFeatures:
        reply = self._features.GetFeatures(
            features_pb2.GetFeaturesRequest(track_id=track_id), timeout=self._timeout
        )
        features: features_pb2.TrackFeatures = reply.features
        return features

    def monitor(
        self,
        chunks: Iterable[bytes],
        *,
        sample_rate_hz: int = 8000,
        channels: int = 1,
        encoded: bool = False,
        stream_name: str = "",
        report_interval_s: float = 0.0,
    ) -> Iterator[MonitorEvent]:
        """Events of a live stream as they happen: track started, playing, ended, unknown.

        `chunks` are 16-bit PCM (at `sample_rate_hz`, `channels` interleaved; 8 kHz
        mono is analysed without resampling) or, with ``encoded=True``, the bytes
        of an encoded stream (MP3, AAC, Ogg ...). Send them as they play: the
        iterator is read by gRPC in the background, and events come back while
        it runs. Stopping the iteration cancels the call.
        """

        def requests() -> Iterator[search_pb2.MonitorRequest]:
            yield monitor_config(stream_name, report_interval_s)
            for chunk in chunks:
                yield monitor_chunk(
                    chunk, sample_rate_hz=sample_rate_hz, channels=channels, encoded=encoded
                )

        call = self._search.Monitor(requests())
        try:
            for event in call:
                yield MonitorEvent.from_proto(event)
        finally:
            call.cancel()

    def register_stream(self, name: str, url: str) -> MonitoredStream:
        """Have the server-side monitors watch `url` (http, https or file) as `name`."""
        reply = self._monitor.RegisterStream(
            monitor_pb2.RegisterStreamRequest(name=name, url=url), timeout=self._timeout
        )
        return MonitoredStream.from_proto(reply.stream)

    def streams(self) -> list[MonitoredStream]:
        reply = self._monitor.ListStreams(monitor_pb2.ListStreamsRequest(), timeout=self._timeout)
        return [MonitoredStream.from_proto(s) for s in reply.streams]

    def remove_stream(self, name: str) -> None:
        self._monitor.RemoveStream(
            monitor_pb2.RemoveStreamRequest(name=name), timeout=self._timeout
        )

    def plays(
        self,
        stream_name: str,
        *,
        since: Moment | None = None,
        until: Moment | None = None,
        page_size: int = 500,
    ) -> Iterator[Play]:
        """The play log of a monitored stream: plays overlapping [since, until), oldest first."""
        token = ""
        while True:
            reply = self._monitor.ListPlays(
                monitor_pb2.ListPlaysRequest(
                    stream_name=stream_name,
                    since=timestamp(since),
                    until=timestamp(until),
                    page_size=page_size,
                    page_token=token,
                ),
                timeout=self._timeout,
            )
            yield from (Play.from_proto(p) for p in reply.plays)
            token = reply.next_page_token
            if not token:
                return
