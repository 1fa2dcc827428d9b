"""Bad uploads get INVALID_ARGUMENT with a precise message and leave nothing behind."""

from __future__ import annotations

import asyncio
import random

import grpc
import nats
import psycopg
import pytest

from bench.synthetic import encode, song, wav_bytes
from earmark import Earmark
from earmark.v1 import common_pb2, fingerprint_pb2, fingerprint_pb2_grpc
from earmark_stack import StackInfo
from tests.integration.conftest import MAX_UPLOAD_BYTES


def _submission_count(stack: StackInfo) -> int:
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM ingest.submissions").fetchone()
    assert row is not None
    return int(row[0])


def _landmark_rows(stack: StackInfo) -> int:
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM catalog.postings").fetchone()
    assert row is not None
    return int(row[0])


def _blob_keys(stack: StackInfo) -> set[str]:
    async def run() -> set[str]:
        nc = await nats.connect(stack.nats_url)
        try:
            store = await nc.jetstream().object_store("earmark-blobs")
            try:
                infos = await store.list()
            except Exception:
                return set()
            return {i.name for i in infos if not i.deleted}
        except Exception:
            return set()
        finally:
            await nc.close()

    return asyncio.run(run())


def _truncated_mp3() -> bytes:
    return encode(song(5, seconds=10), "mp3")[:300]


def _text() -> bytes:
    return b"This is not audio. " * 100


def _noise_bytes(size: int, seed: int) -> bytes:
    # Seeded, not os.urandom: a few random byte strings in a thousand probe as some
    # container with no audio stream, which is refused with a different message.
    return random.Random(seed).randbytes(size)


def _elf() -> bytes:
    return b"\x7fELF\x02\x01\x01\x00" + _noise_bytes(4000, seed=2)


def _png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    raw = b"".join(b"\x00" + bytes(range(16)) * 3 for _ in range(16))
    header = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )  # fmt: skip


def _zip() -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("song.mp3", b"ID3" + _noise_bytes(3000, seed=3))
    return buf.getvalue()


def _polyglot() -> bytes:
    # A zip archive wearing a RIFF/WAVE header: the header alone must not pass.
    return b"RIFF\x24\x00\x00\x00WAVEfmt " + _zip()


def _concat_playlist() -> bytes:
    return b"ffconcat version 1.0\nfile '/etc/passwd'\n"


BAD_UPLOADS = [
    ("empty.wav", lambda: b"", "empty upload"),
    ("random.mp3", lambda: _noise_bytes(20000, seed=1), "not decodable as audio"),
    ("truncated.mp3", _truncated_mp3, ""),
    ("notes.wav", _text, "not decodable as audio"),
    ("program.flac", _elf, "not decodable as audio"),
    ("silence.wav", lambda: wav_bytes(song(1, 5) * 0.0), "silent"),
    ("short.wav", lambda: wav_bytes(song(2, 1.0)), "at least"),
    ("huge.wav", lambda: _noise_bytes(MAX_UPLOAD_BYTES + 1024, seed=4), "larger than"),
    ("cover.mp3", _png, ""),
    ("album.flac", _zip, "not decodable as audio"),
    ("polyglot.wav", _polyglot, "not decodable as audio"),
    ("playlist.wav", _concat_playlist, ""),
]


@pytest.mark.parametrize("name,make,fragment", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_upload_is_refused_and_leaves_nothing(
    client: Earmark, stack: StackInfo, name: str, make: object, fragment: str
) -> None:
    before = (_submission_count(stack), _blob_keys(stack), _landmark_rows(stack))
    with pytest.raises(grpc.RpcError) as err:
        client.upload(make(), external_id=name)  # type: ignore[operator]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert fragment in (err.value.details() or ""), err.value.details()
    trailing = dict(err.value.trailing_metadata() or ())
    assert trailing.get("earmark-rejection-code", "").startswith("REJECTION_CODE_")
    after = (_submission_count(stack), _blob_keys(stack), _landmark_rows(stack))
    assert after == before


def test_upload_without_external_id_is_refused(client: Earmark) -> None:
    with pytest.raises(grpc.RpcError) as err:
        client.upload(wav_bytes(song(3, 5)), external_id="")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "external_id" in (err.value.details() or "")


def test_unknown_ids_get_clear_statuses(client: Earmark) -> None:
    with pytest.raises(grpc.RpcError) as err:
        client.submission("not-a-uuid")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        client.submission("00000000-0000-0000-0000-000000000000")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _extract(
    stack: StackInfo, encoded: bytes | None = None, **request: object
) -> fingerprint_pb2.ExtractFingerprintResponse:
    with grpc.insecure_channel(stack.addr("fingerprint")) as channel:
        stub = fingerprint_pb2_grpc.FingerprintServiceStub(channel)
        if "decoded" not in request:
            data = encoded if encoded is not None else wav_bytes(song(11, seconds=4))
            request["audio"] = common_pb2.AudioInput(encoded=data)
        reply: fingerprint_pb2.ExtractFingerprintResponse = stub.ExtractFingerprint(
            fingerprint_pb2.ExtractFingerprintRequest(**request),
            timeout=60,
        )
    return reply


def test_rescaled_landmarks_can_come_without_the_plain_ones(stack: StackInfo) -> None:
    both = _extract(stack, rescale=True)
    only = _extract(stack, rescale=True, omit_landmarks=True)
    assert both.HasField("landmarks") and len(both.landmarks.hashes) > 0
    assert not only.HasField("landmarks")
    assert [r.SerializeToString() for r in only.rescaled] == [
        r.SerializeToString() for r in both.rescaled
    ]


def test_omitting_the_landmarks_of_an_indexing_extraction_is_refused(stack: StackInfo) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _extract(stack, purpose=fingerprint_pb2.EXTRACTION_PURPOSE_INDEX, omit_landmarks=True)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "omit_landmarks applies to queries" in (refused.value.details() or "")


def test_a_decoded_clip_sent_back_gives_the_same_fingerprints(stack: StackInfo) -> None:
    """Identify's follow-up requests send the clip as fingerprint decoded it the
    first time; they must see exactly what a decode of the upload gives."""
    mp3 = encode(song(12, seconds=5), "mp3", bitrate="64k")
    first = _extract(stack, mp3, return_decoded=True, rescale=True)
    clip = first.decoded
    assert clip.sample_rate_hz == 8000
    assert abs(len(clip.samples) / 4 - 5 * 8000) <= 2000
    again = _extract(stack, decoded=clip, rescale=True)
    assert len(first.landmarks.hashes) > 0 and len(first.rescaled) > 0
    assert again.landmarks.SerializeToString() == first.landmarks.SerializeToString()
    assert [r.SerializeToString() for r in again.rescaled] == [
        r.SerializeToString() for r in first.rescaled
    ]
    assert not again.HasField("decoded")  # only when asked


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        (
            {"decoded": fingerprint_pb2.DecodedClip(samples=b"\0" * 800, sample_rate_hz=16000)},
            "must be at 8000 Hz",
        ),
        (
            {"decoded": fingerprint_pb2.DecodedClip(samples=b"\0" * 801, sample_rate_hz=8000)},
            "whole number of float32 samples",
        ),
        ({"decoded": fingerprint_pb2.DecodedClip(sample_rate_hz=8000)}, "empty decoded audio"),
        (
            {
                "decoded": fingerprint_pb2.DecodedClip(
                    samples=bytes.fromhex("0000c07f") * 200, sample_rate_hz=8000
                )
            },
            "not finite",
        ),
        (
            {
                "decoded": fingerprint_pb2.DecodedClip(
                    samples=b"\0" * 4 * 8000 * 3, sample_rate_hz=8000
                ),
                "max_duration_s": 2.0,
            },
            "longer than the 2 s limit",
        ),
        (
            {
                "decoded": fingerprint_pb2.DecodedClip(samples=b"\0" * 800, sample_rate_hz=8000),
                "audio": common_pb2.AudioInput(encoded=b"RIFF"),
            },
            "not both",
        ),
        (
            {"purpose": fingerprint_pb2.EXTRACTION_PURPOSE_INDEX, "return_decoded": True},
            "apply to queries",
        ),
    ],
)
def test_bad_decoded_clips_are_refused(
    stack: StackInfo, request_fields: dict[str, object], message: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _extract(stack, **request_fields)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (refused.value.details() or "")
