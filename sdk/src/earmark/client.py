"""Synchronous Earmark client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from earmark.v1 import (
    features_pb2,
    features_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
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
from .results import Identification, Submission, TimelineEntry, Track


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
        timeout_s: float = 60.0,
        api_key: str | None = None,
    ) -> None:
        ends = resolve(ingest=ingest, search=search, features=features)
        key = _auth.api_key(api_key)  # default: $EARMARK_API_KEY
        pairs = [_auth.sync_channel(a, key) for a in (ends.ingest, ends.search, ends.features)]
        self._channels = [raw for raw, _ in pairs]
        self._ingest = ingest_pb2_grpc.IngestServiceStub(pairs[0][1])
        self._search = search_pb2_grpc.SearchServiceStub(pairs[1][1])
        self._features = features_pb2_grpc.FeaturesServiceStub(pairs[2][1])
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

    def identify(self, clip: AudioSource, *, max_matches: int = 1) -> Identification:
        data = read_audio(clip)
        started = time.perf_counter()
        reply = self._search.Identify(
            search_pb2.IdentifyRequest(audio=audio_input(data), max_matches=max_matches),
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
