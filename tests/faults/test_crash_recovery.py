"""Kill and restart every process during a bulk ingest; nothing is lost or doubled.

Faults, in turn, while uploads are in flight: kill -9 fingerprint, search and
ingest (each restarted), restart nats-server, restart PostgreSQL. Afterwards
every acknowledged upload has exactly one INDEXED submission, the catalog has
one track and exactly its landmarks per recording, and the blob store holds
exactly the sources of the catalog.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import nats
import psycopg
import pytest

from bench.synthetic import song, wav_bytes
from earmark import Earmark
from earmark_stack import (
    StackInfo,
    down,
    read_info,
    restart_nats,
    restart_postgres,
    restart_service,
    up,
)

TRACKS = 40
SR = 22050


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    home: Path = tmp_path_factory.mktemp("earmark-faults")
    info = up(home, extra_env={"EARMARK_REQUIRED_TAGS": ""})
    try:
        yield info
    finally:
        down(home)


def _upload_with_retry(
    info_home: Path, data: bytes, external_id: str, stop: threading.Event
) -> str:
    """What a careful client does: retry UNAVAILABLE until the upload is acknowledged."""
    while not stop.is_set():
        info = read_info(info_home)
        assert info is not None
        try:
            with Earmark(
                ingest=info.addr("ingest"), search=info.addr("search"), timeout_s=20
            ) as em:
                return em.upload(data, external_id=external_id).submission_id
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            time.sleep(0.5)
    raise TimeoutError(external_id)


def _kill(info: StackInfo, name: str) -> None:
    os.kill(int(info.services[name]["pid"]), signal.SIGKILL)


def test_every_submission_ends_exactly_once_through_crashes(stack: StackInfo) -> None:
    home = Path(stack.home)
    songs = {f"fault-{n:03d}": wav_bytes(song(500 + n, seconds=8)) for n in range(TRACKS)}
    stop = threading.Event()
    identify_outcomes: list[str] = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            ext: pool.submit(_upload_with_retry, home, data, ext, stop)
            for ext, data in songs.items()
        }
        faults = [
            lambda: (_kill(read_info(home), "fingerprint"), restart_service(home, "fingerprint")),  # type: ignore[arg-type]
            lambda: (_kill(read_info(home), "search"), restart_service(home, "search")),  # type: ignore[arg-type]
            lambda: restart_nats(home),
            lambda: (_kill(read_info(home), "ingest"), restart_service(home, "ingest")),  # type: ignore[arg-type]
            lambda: restart_postgres(home),
        ]
        for fault in faults:
            time.sleep(1.5)
            fault()
            identify_outcomes.append(_identify_during_faults(home, songs["fault-000"]))
        ids = {ext: f.result(timeout=300) for ext, f in futures.items()}

    info = read_info(home)
    assert info is not None
    with Earmark(ingest=info.addr("ingest"), search=info.addr("search")) as em:
        final = em.wait(list(ids.values()), timeout_s=240)
        assert {s.state for s in final} == {"INDEXED"}, [
            (s.external_id, s.state, s.rejection_message) for s in final if s.state != "INDEXED"
        ]
        assert em.identify(songs["fault-007"]).match is not None

    with psycopg.connect(info.database_url) as conn:
        per_external = conn.execute(
            "SELECT external_id, count(*) FROM ingest.submissions WHERE state = 3 GROUP BY 1"
        ).fetchall()
        assert sorted(per_external) == sorted((ext, 1) for ext in songs)
        tracks, expected_postings = conn.execute(
            "SELECT count(*), sum(landmark_count) FROM catalog.tracks"
        ).fetchone()  # type: ignore[misc]
        postings = conn.execute("SELECT count(*) FROM catalog.postings").fetchone()[0]  # type: ignore[index]
        rows = conn.execute("SELECT source_sha256, track_id::text FROM catalog.tracks").fetchall()
        shas = {r[0] for r in rows}
        track_ids = {r[1] for r in rows}
    assert tracks == TRACKS
    assert postings == expected_postings, "landmark postings doubled or lost"
    keys = _blob_keys(info)
    assert {k for k in keys if k.startswith("sources/")} == {f"sources/{sha}" for sha in shas}
    rendition_owners = {k.split("/")[1] for k in keys if k.startswith("renditions/")}
    assert rendition_owners <= track_ids, "renditions of tracks that are not in the catalog"
    assert len(keys) == len(shas) + sum(k.startswith("renditions/") for k in keys)
    # During the faults identify either answered right or said UNAVAILABLE, never wrong.
    assert all(o in ("right", "no match yet", "UNAVAILABLE") for o in identify_outcomes), (
        identify_outcomes
    )


def _identify_during_faults(home: Path, data: bytes) -> str:
    info = read_info(home)
    assert info is not None
    try:
        with Earmark(ingest=info.addr("ingest"), search=info.addr("search"), timeout_s=10) as em:
            match = em.identify(data).match
    except grpc.RpcError as exc:
        return exc.code().name
    if match is None:
        return "no match yet"
    return "right" if match.external_id == "fault-000" else f"wrong: {match.external_id}"


def _blob_keys(info: StackInfo) -> set[str]:
    async def run() -> set[str]:
        nc = await nats.connect(info.nats_url)
        try:
            store = await nc.jetstream().object_store("earmark-blobs")
            return {i.name for i in await store.list() if not i.deleted}
        finally:
            await nc.close()

    return asyncio.run(run())
