"""Bulk ingestion: NATS ingest requests, resumable `earmark ingest`, stages and watching."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nats

from bench.synthetic import song, wav_bytes
from earmark import Earmark
from earmark.v1 import common_pb2, events_pb2
from earmark_stack import StackInfo


def _publish_requests(stack: StackInfo, requests: list[events_pb2.IngestRequested]) -> None:
    async def run() -> None:
        nc = await nats.connect(stack.nats_url)
        js = nc.jetstream()
        for req in requests:
            await js.publish(
                "earmark.ingest.requested",
                req.SerializeToString(),
                headers={"Nats-Msg-Id": req.path},
            )
        await nc.close()

    asyncio.run(run())


def _wait_for_external(client: Earmark, stack: StackInfo, external_id: str) -> dict[str, object]:
    import psycopg

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with psycopg.connect(stack.database_url) as conn:
            row = conn.execute(
                "SELECT submission_id::text, state, rejection_message FROM ingest.submissions "
                "WHERE external_id = %s ORDER BY created_at DESC LIMIT 1",
                (external_id,),
            ).fetchone()
        if row and row[1] in (3, 4):
            return {"id": row[0], "state": row[1], "message": row[2]}
        time.sleep(0.3)
    raise AssertionError(f"{external_id} never reached a final state")


def test_ingest_requests_from_nats_read_files_under_the_root(
    client: Earmark, stack: StackInfo, ingest_root: Path
) -> None:
    (ingest_root / "album").mkdir(exist_ok=True)
    (ingest_root / "album" / "one.wav").write_bytes(wav_bytes(song(800, seconds=8)))
    (ingest_root / "album" / "notes.wav").write_bytes(b"not audio at all" * 50)
    _publish_requests(
        stack,
        [
            events_pb2.IngestRequested(
                path="album/one.wav", metadata=common_pb2.TrackMetadata(title="One", artist="Bulk")
            ),
            events_pb2.IngestRequested(path="album/notes.wav"),
            events_pb2.IngestRequested(path="../../etc/passwd", external_id="escape"),
        ],
    )
    one = _wait_for_external(client, stack, "album/one.wav")
    assert one["state"] == 3
    assert client.track(str(one["id"])).title == "One"
    notes = _wait_for_external(client, stack, "album/notes.wav")
    assert notes["state"] == 4 and "not decodable as audio" in str(notes["message"])


def test_watch_reports_every_stage_in_order(client: Earmark) -> None:
    sub = client.upload(wav_bytes(song(801, seconds=8)), external_id="watched.wav")
    seen = list(client.watch(sub.submission_id, timeout_s=120))
    assert seen[-1].state == "INDEXED"
    stages = [stage for stage, _at in seen[-1].stages]
    assert stages[0] == "validated"
    assert {"fingerprinted", "indexed", "analysed", "transcoded"} <= set(stages)
    assert stages.index("fingerprinted") < stages.index("indexed")
    times = [at for _stage, at in seen[-1].stages]
    assert times == sorted(times)


def test_cli_ingest_resumes_and_summarises(stack: StackInfo, tmp_path: Path) -> None:
    folder = tmp_path / "music"
    folder.mkdir()
    for n in range(4):
        (folder / f"song{n}.wav").write_bytes(wav_bytes(song(810 + n, seconds=6)))
    (folder / "noise.wav").write_bytes(wav_bytes(song(810, seconds=1.0)))  # too short
    env = {**os.environ, "EARMARK_HOME": stack.home}
    cli = [sys.executable, "-m", "earmark.cli", "ingest", str(folder), "--wait", "--json"]
    first = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    rows = [json.loads(line) for line in first.stdout.splitlines()]
    assert sorted(r["state"] for r in rows) == ["INDEXED"] * 4 + ["REFUSED"]
    assert first.returncode == 1  # something was refused
    again = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    rows = [json.loads(line) for line in again.stdout.splitlines()]
    assert sorted(r["state"] for r in rows) == ["REFUSED"] + ["SKIPPED"] * 4
