"""API keys and roles on the real stack: refusals carry the right status, and
the services authenticate to each other (search -> fingerprint)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bench.synthetic import song, wav_bytes
from earmark import Earmark
from earmark.v1 import ingest_pb2, ingest_pb2_grpc
from earmark_runtime.auth import hash_key
from earmark_stack import StackInfo, down, up

KEYS = {"identify": "k-player", "ingest": "k-label", "admin": "k-ops", "service": "k-internal"}
SR = 22050


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    home: Path = tmp_path_factory.mktemp("earmark-auth")
    keys_file = home / "keys.json"
    keys_file.write_text(
        json.dumps(
            [
                {"name": "player", "role": "identify", "sha256": hash_key(KEYS["identify"])},
                {"name": "label", "role": "ingest", "sha256": hash_key(KEYS["ingest"])},
                {"name": "ops", "role": "admin", "sha256": hash_key(KEYS["admin"])},
                {"name": "services", "role": "admin", "sha256": hash_key(KEYS["service"])},
            ]
        )
    )
    info = up(
        home,
        extra_env={
            "EARMARK_API_KEYS_FILE": str(keys_file),
            "EARMARK_API_KEY": KEYS["service"],
            "EARMARK_REQUIRED_TAGS": "",
        },
    )
    try:
        yield info
    finally:
        down(home)


def _client(info: StackInfo, key: str | None) -> Earmark:
    return Earmark(ingest=info.addr("ingest"), search=info.addr("search"), api_key=key or "")


def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_roles_are_enforced_end_to_end(secured: StackInfo) -> None:
    audio = song(900, seconds=10)
    with _client(secured, KEYS["ingest"]) as label:
        sub = label.upload(wav_bytes(audio), external_id="auth-song")
        (final,) = label.wait([sub.submission_id], timeout_s=90)
        assert final.state == "INDEXED"
        assert _code(lambda: label.identify(wav_bytes(audio[SR : 6 * SR]))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    with _client(secured, KEYS["identify"]) as player:
        # search calls fingerprint with its own service key.
        match = player.identify(wav_bytes(audio[SR : 6 * SR])).match
        assert match is not None and match.track_id == final.track_id
        assert _code(lambda: player.upload(wav_bytes(audio), external_id="x")) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert (
            _code(lambda: player.delete_track(final.track_id)) == grpc.StatusCode.PERMISSION_DENIED
        )
    with _client(secured, None) as anonymous:
        assert _code(lambda: list(anonymous.tracks())) == grpc.StatusCode.UNAUTHENTICATED
    with _client(secured, "not-a-key") as stranger:
        assert _code(lambda: list(stranger.tracks())) == grpc.StatusCode.UNAUTHENTICATED
    # Reindex is admin-only; ingest runs it by asking fingerprint with its service key.
    for role in ("ingest", "identify"):
        assert _code(lambda role=role: _reindex(secured, KEYS[role])) == (
            grpc.StatusCode.PERMISSION_DENIED
        ), role
    progress = _reindex(secured, KEYS["admin"])
    assert progress.algorithm_version >= 1 and progress.indexed_tracks >= 1
    with _client(secured, KEYS["admin"]) as ops:
        ops.delete_track(final.track_id)


def _reindex(info: StackInfo, key: str) -> ingest_pb2.ReindexResponse:
    with grpc.insecure_channel(info.addr("ingest")) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        reply: ingest_pb2.ReindexResponse = stub.Reindex(
            ingest_pb2.ReindexRequest(dry_run=True), metadata=[("x-api-key", key)], timeout=30
        )
        return reply
