"""Fuzzing the gRPC handlers: random bytes, mutated and structured requests sent
over loopback to the real servicers (fingerprint, ingest, search) behind the
real server interceptor (tests/fuzz/live.py). Every call must end with a gRPC
status a client can act on; UNKNOWN means a handler raised, DEADLINE_EXCEEDED
that it hung.
"""

from __future__ import annotations

import math
import struct

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from earmark.v1 import common_pb2, fingerprint_pb2, ingest_pb2, search_pb2
from tests.fuzz.live import FINGERPRINT, INGEST, KINDS, SEARCH, call, pack
from tests.fuzz.support import INTERESTING_U32, fuzz_settings, kept_on_failure, mutated, seeds

pytestmark = pytest.mark.timeout(600)


def check(channel: grpc.Channel, method: str, messages: list[bytes]) -> None:
    with kept_on_failure(f"proto/{method.strip('/').replace('/', '.')}", "call", pack(messages)):
        call(channel, method, messages)


# Strategies for fields: the values that break naive code.
ids = st.one_of(
    st.text(max_size=60),
    st.uuids().map(str),
    st.sampled_from(["", "00000000-0000-0000-0000-000000000000", "0" * 64, "../../etc"]),
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 0.5, 1e308])
)
uints = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from(INTERESTING_U32))
audio_bytes = st.one_of(st.binary(max_size=2048), mutated(seeds()), st.sampled_from(seeds()))


@st.composite
def audio_inputs(draw: st.DrawFn) -> common_pb2.AudioInput:
    if draw(st.booleans()):
        return common_pb2.AudioInput(encoded=draw(audio_bytes))
    return common_pb2.AudioInput(
        pcm=common_pb2.PcmAudio(
            samples=draw(st.binary(max_size=8192)),
            sample_rate_hz=draw(st.one_of(st.sampled_from(INTERESTING_U32), st.just(8000))),
            channels=draw(st.one_of(st.sampled_from(INTERESTING_U32), st.integers(0, 3))),
        )
    )


# A clip "as fingerprint decoded it", as a hostile caller might send it back.
decoded_clips = st.builds(
    fingerprint_pb2.DecodedClip,
    samples=st.one_of(
        st.binary(max_size=8192),
        st.lists(floats, max_size=2048).map(
            lambda xs: struct.pack(f"<{len(xs)}f", *(_f32(x) for x in xs))
        ),
    ),
    sample_rate_hz=st.one_of(st.sampled_from(INTERESTING_U32), st.just(8000)),
)


def _f32(x: float) -> float:
    """A Python float as float32 can hold it (out-of-range values become infinite)."""
    return x if not math.isfinite(x) or abs(x) < 3.4e38 else math.copysign(math.inf, x)


def structured(method: str) -> st.SearchStrategy[list[Message]]:
    """Well-formed requests of `method` with hostile field values."""
    if method == FINGERPRINT:
        return st.builds(
            fingerprint_pb2.ExtractFingerprintRequest,
            audio=st.one_of(audio_inputs(), st.none()),
            purpose=st.integers(0, 5),
            max_duration_s=floats,
            rescale=st.booleans(),
            neural=st.booleans(),
            neural_rescale=st.booleans(),
            omit_landmarks=st.booleans(),
            return_decoded=st.booleans(),
            decoded=st.one_of(st.none(), decoded_clips),
        ).map(lambda m: [m])
    if method == SEARCH + "Identify":
        return st.builds(search_pb2.IdentifyRequest, audio=audio_inputs(), max_matches=uints).map(
            lambda m: [m]
        )
    if method == SEARCH + "Scan":
        header = st.builds(search_pb2.ScanHeader, window_s=floats, hop_s=floats)
        parts = st.lists(
            st.one_of(
                header.map(lambda h: search_pb2.ScanRequest(header=h)),
                audio_bytes.map(lambda b: search_pb2.ScanRequest(chunk=b)),
            ),
            max_size=4,
        )
        return parts.map(lambda ps: ps or [search_pb2.ScanRequest()])
    if method == SEARCH + "ListTracks":
        return st.builds(
            search_pb2.ListTracksRequest, page_size=uints, page_token=st.text(max_size=30)
        ).map(lambda m: [m])
    if method == INGEST + "Upload":
        header = st.builds(
            ingest_pb2.UploadHeader,
            external_id=st.text(max_size=200),
            filename=st.text(max_size=200),
            metadata=st.builds(
                common_pb2.TrackMetadata,
                title=st.text(max_size=1200),
                extra=st.dictionaries(st.text(max_size=70), st.text(max_size=50), max_size=5),
            ),
        )
        parts = st.lists(
            st.one_of(
                header.map(lambda h: ingest_pb2.UploadRequest(header=h)),
                audio_bytes.map(lambda b: ingest_pb2.UploadRequest(chunk=b)),
            ),
            max_size=4,
        )
        return parts.map(lambda ps: ps or [ingest_pb2.UploadRequest()])
    if method in (INGEST + "BatchGetSubmissions",):
        return st.lists(ids, max_size=1100).map(
            lambda xs: [ingest_pb2.BatchGetSubmissionsRequest(submission_ids=xs)]
        )
    if method == INGEST + "LookupSubmissions":
        return st.lists(ids, max_size=1100).map(
            lambda xs: [ingest_pb2.LookupSubmissionsRequest(source_sha256=xs)]
        )
    if method == INGEST + "Download":
        return st.builds(
            ingest_pb2.DownloadRequest, track_id=ids, rendition=st.text(max_size=20)
        ).map(lambda m: [m])
    single_id = {
        SEARCH + "GetTrack": lambda i: search_pb2.GetTrackRequest(track_id=i),
        SEARCH + "DeleteTrack": lambda i: search_pb2.DeleteTrackRequest(track_id=i),
        INGEST + "GetSubmission": lambda i: ingest_pb2.GetSubmissionRequest(submission_id=i),
        INGEST + "WatchSubmission": lambda i: ingest_pb2.WatchSubmissionRequest(submission_id=i),
    }[method]
    return ids.map(lambda i: [single_id(i)])


@st.composite
def requests(draw: st.DrawFn, method: str) -> list[bytes]:
    """Random bytes, a structured request, or a structured one with bytes flipped."""
    how = draw(st.sampled_from(("random", "structured", "structured", "mutated")))
    if how == "random":
        return draw(st.lists(st.binary(max_size=512), min_size=1, max_size=3))
    messages = [m.SerializeToString() for m in draw(structured(method))]
    if how == "mutated":
        return [draw(mutated([m], max_ops=3)) if m else m for m in messages]
    return messages


EXAMPLES = {FINGERPRINT: 150, SEARCH + "Identify": 100, INGEST + "Upload": 100}


@pytest.mark.parametrize("method", sorted(KINDS))
def test_every_request_gets_a_status(channel: grpc.Channel, method: str) -> None:
    @fuzz_settings(EXAMPLES.get(method, 60))
    @given(requests(method))
    def run(messages: list[bytes]) -> None:
        check(channel, method, messages)

    run()
