"""Identify's follow-up requests to fingerprint (the rescue, the pitch views)
send the clip as fingerprint decoded it; a replica that predates DecodedClip
refuses such a request, and search then sends the upload instead."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest

from earmark.v1 import common_pb2, fingerprint_pb2
from earmark_search.app import SearchServicer

UPLOAD = common_pb2.AudioInput(encoded=b"RIFF....WAVE")
DECODED = fingerprint_pb2.DecodedClip(samples=np.zeros(8000, "<f4").tobytes(), sample_rate_hz=8000)


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class Fingerprinter:
    """Answers like a fingerprint replica, old (no DecodedClip) or current, or fails."""

    def __init__(self, knows_decoded: bool, failure: grpc.StatusCode | None = None) -> None:
        self.knows_decoded = knows_decoded
        self.failure = failure
        self.requests: list[fingerprint_pb2.ExtractFingerprintRequest] = []

    async def ExtractFingerprint(
        self, request: fingerprint_pb2.ExtractFingerprintRequest, timeout: float
    ) -> fingerprint_pb2.ExtractFingerprintResponse:
        sent = fingerprint_pb2.ExtractFingerprintRequest()
        sent.CopyFrom(request)  # what went over the wire, as gRPC would serialise it
        self.requests.append(sent)
        if self.failure is not None:
            raise _error(self.failure, "bad things")
        if request.HasField("decoded") and not self.knows_decoded:
            raise _error(
                grpc.StatusCode.INVALID_ARGUMENT, "no audio given: set audio.encoded or audio.pcm"
            )
        scaled = common_pb2.LandmarkFingerprint(
            hashes=np.array([7, 9], "<u4").tobytes(), times=np.array([1, 2], "<u4").tobytes()
        )
        return fingerprint_pb2.ExtractFingerprintResponse(
            rescaled=[fingerprint_pb2.ScaledLandmarks(frequency_scale=1.02, landmarks=scaled)]
        )


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def _servicer(fingerprinter: Fingerprinter) -> SearchServicer:
    ctx: Any = SimpleNamespace(settings=SimpleNamespace(max_clip_s=30.0))
    catalog: Any = None
    return SearchServicer(ctx, catalog, fingerprinter)


async def test_a_current_replica_gets_the_decoded_clip_only() -> None:
    fingerprinter = Fingerprinter(knows_decoded=True)
    scaled = await _servicer(fingerprinter)._rescaled(UPLOAD, DECODED, Context())
    assert [r.HasField("decoded") for r in fingerprinter.requests] == [True]
    assert scaled[0].frequency_scale == 1.02 and scaled[0].hashes.tolist() == [7, 9]


async def test_an_older_replica_gets_the_upload_after_refusing_the_decoded_clip() -> None:
    fingerprinter = Fingerprinter(knows_decoded=False)
    scaled = await _servicer(fingerprinter)._rescaled(UPLOAD, DECODED, Context())
    first, second = fingerprinter.requests
    assert first.HasField("decoded") and not first.HasField("audio")
    assert second.audio == UPLOAD and not second.HasField("decoded")
    assert second.rescale and second.omit_landmarks
    assert scaled[0].hashes.tolist() == [7, 9]


async def test_a_refusal_of_the_upload_too_reaches_the_caller() -> None:
    fingerprinter = Fingerprinter(knows_decoded=True, failure=grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(Aborted) as refused:
        await _servicer(fingerprinter)._rescaled(UPLOAD, DECODED, Context())
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad things" in str(refused.value)
    assert [r.HasField("decoded") for r in fingerprinter.requests] == [True, False]


async def test_an_unavailable_fingerprint_is_not_asked_twice() -> None:
    fingerprinter = Fingerprinter(knows_decoded=True, failure=grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(Aborted) as failed:
        await _servicer(fingerprinter)._rescaled(UPLOAD, DECODED, Context())
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(fingerprinter.requests) == 1
