"""`earmark backup` then `earmark restore` into a fresh stack gives back the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.synthetic import song, wav_bytes
from earmark import Earmark
from earmark_stack import StackInfo, down, restart_service, up
from earmark_stack.backup import backup, restore

SR = 22050


def test_backup_restore_round_trip(
    client: Earmark, stack: StackInfo, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    audio = song(960, seconds=10)
    sub = client.upload(wav_bytes(audio), external_id="backed-up", metadata={"title": "Kept"})
    (final,) = client.wait([sub.submission_id], timeout_s=90)
    assert final.state == "INDEXED"
    before = {t.track_id: t for t in client.tracks()}

    manifest = backup(
        stack.database_url, stack.nats_url, tmp_path / "backup", progress=lambda m: None
    )
    assert f"sources/{final.source_sha256}" in manifest["blobs"]  # type: ignore[operator]

    home: Path = tmp_path_factory.mktemp("earmark-restored")
    fresh = up(home, extra_env={"EARMARK_REQUIRED_TAGS": ""})
    try:
        restore(fresh.database_url, fresh.nats_url, tmp_path / "backup", progress=lambda m: None)
        restart_service(home, "features")  # rebuilds its vector index from PostgreSQL
        with Earmark(ingest=fresh.addr("ingest"), search=fresh.addr("search")) as em:
            after = {t.track_id: t for t in em.tracks()}
            assert after == before
            match = em.identify(wav_bytes(audio[2 * SR : 7 * SR])).match
            assert match is not None and match.track_id == final.track_id
            assert em.submission(final.submission_id).state == "INDEXED"
            assert b"".join(em.download(final.track_id, "source")) == wav_bytes(audio)
    finally:
        down(home)
