"""`earmark reindex` on the real stack: after an algorithm change, indexed tracks
are fingerprinted again from their kept sources while identify keeps answering,
and end with the same landmarks, no doubled postings and nothing else touched.

The algorithm change is simulated the way an upgrade leaves the data: the test
tracks are marked as fingerprinted by version 0, in ingest and in the catalog.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import numpy as np
import psycopg
import pytest

from bench.synthetic import song, wav_bytes
from earmark import Earmark
from earmark.v1 import common_pb2, events_pb2, ingest_pb2, ingest_pb2_grpc
from earmark_search.catalog import Catalog
from earmark_stack import StackInfo

SR = 22050
SEEDS = (7101, 7102, 7103)


@pytest.fixture(scope="module")
def ingest(stack: StackInfo) -> Iterator[ingest_pb2_grpc.IngestServiceStub]:
    with grpc.insecure_channel(stack.addr("ingest")) as channel:
        yield ingest_pb2_grpc.IngestServiceStub(channel)


@pytest.fixture(scope="module")
def tracks(client: Earmark) -> dict[int, str]:
    """Seed -> track id of three indexed tracks of this module."""
    subs = {
        seed: client.upload(wav_bytes(song(seed, seconds=20)), external_id=f"reindex-{seed}")
        for seed in SEEDS
    }
    final = client.wait([s.submission_id for s in subs.values()], timeout_s=120)
    assert [s.state for s in final] == ["INDEXED"] * len(SEEDS)
    return {seed: s.track_id for seed, s in zip(SEEDS, final, strict=True)}


def _catalog_state(stack: StackInfo, track_ids: list[str]) -> dict[str, tuple[int, int, int, int]]:
    """track id -> (landmark_count, postings in the index, fingerprint length, version)."""
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute(
            """
            SELECT t.track_id::text, t.landmark_count,
                   (SELECT count(*) FROM catalog.postings l
                    WHERE l.track_key = t.track_key
                      AND l.hash = ANY(SELECT unnest(f.hashes))),
                   cardinality(f.hashes), t.algorithm_version
            FROM catalog.tracks t JOIN catalog.fingerprints f USING (track_key)
            WHERE t.track_id = ANY(%s::uuid[])
            """,
            (track_ids,),
        ).fetchall()
    return {r[0]: (int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}


def _indexed_at(stack: StackInfo, track_ids: list[str]) -> dict[str, float]:
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute(
            "SELECT track_id::text, extract(epoch FROM indexed_at) FROM catalog.tracks "
            "WHERE track_id = ANY(%s::uuid[])",
            (track_ids,),
        ).fetchall()
    return {r[0]: float(r[1]) for r in rows}


def _simulate_older_algorithm(stack: StackInfo, track_ids: list[str]) -> None:
    with psycopg.connect(stack.database_url) as conn:
        conn.execute(
            "UPDATE ingest.submissions SET algorithm_version = 0 "
            "WHERE submission_id = ANY(%s::uuid[])",
            (track_ids,),
        )
        conn.execute(
            "UPDATE catalog.tracks SET algorithm_version = 0 WHERE track_id = ANY(%s::uuid[])",
            (track_ids,),
        )


class IdentifyLoop:
    """Identifies clips of the tracks without pause, in a thread, until stopped."""

    def __init__(self, client: Earmark, tracks: dict[int, str]) -> None:
        self._client = client
        self._clips = [
            (track_id, wav_bytes(song(seed, seconds=20)[int(4 * SR) : int(9 * SR)]))
            for seed, track_id in tracks.items()
        ]
        self.answers: list[str] = []  # the matched track id, or why not
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> IdentifyLoop:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            expected, clip = self._clips[n % len(self._clips)]
            n += 1
            try:
                match = self._client.identify(clip).match
                answer = match.track_id if match else "no match"
            except grpc.RpcError as err:
                answer = f"error {err.code().name}"  # type: ignore[attr-defined]
            self.answers.append("ok" if answer == expected else f"{expected}: {answer}")


def test_reindex_replaces_landmarks_without_downtime(
    stack: StackInfo,
    client: Earmark,
    ingest: ingest_pb2_grpc.IngestServiceStub,
    tracks: dict[int, str],
) -> None:
    ids = list(tracks.values())
    before = _catalog_state(stack, ids)
    assert all(count > 100 and postings == count for count, postings, _, _ in before.values())
    current = ingest.Reindex(ingest_pb2.ReindexRequest(dry_run=True), timeout=30)
    assert current.algorithm_version >= 1 and current.requested == 0
    assert current.outdated_tracks == 0  # every track of the stack is up to date
    _simulate_older_algorithm(stack, ids)
    stamps = _indexed_at(stack, ids)

    with IdentifyLoop(client, tracks) as identifying:
        started = ingest.Reindex(ingest_pb2.ReindexRequest(), timeout=60)
        assert started.outdated_tracks == len(ids)
        assert started.requested == len(ids) and started.generation
        deadline = time.monotonic() + 120
        progress = started
        while time.monotonic() < deadline:
            progress = ingest.Reindex(ingest_pb2.ReindexRequest(dry_run=True), timeout=30)
            written = _indexed_at(stack, ids)
            if progress.pending == 0 and all(written[i] > stamps[i] for i in ids):
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"reindex did not finish: {progress}")
        time.sleep(0.5)  # identify once more against the new landmarks

    assert progress.outdated_tracks == 0 and progress.requested == 0
    assert identifying.answers, "identify was not exercised during the reindex"
    assert set(identifying.answers) == {"ok"}, [a for a in identifying.answers if a != "ok"]

    after = _catalog_state(stack, ids)
    for track_id in ids:
        count, postings, length, version = after[track_id]
        assert (count, postings, length) == before[track_id][:3]  # same audio, same landmarks
        assert version == current.algorithm_version
    assert {s.state for s in client.submissions(ids)} == {"INDEXED"}

    # Nothing is left to do: a second call requests nothing.
    again = ingest.Reindex(ingest_pb2.ReindexRequest(), timeout=30)
    assert (again.requested, again.outdated_tracks, again.pending) == (0, 0, 0)


async def test_a_reindex_never_brings_back_a_deleted_track(stack: StackInfo) -> None:
    from psycopg_pool import AsyncConnectionPool

    gone = str(uuid.uuid4())
    hashes = np.arange(1000, 1200, dtype="<u4")
    event = events_pb2.FingerprintExtracted(
        submission=events_pb2.SubmissionReceived(submission_id=gone, blob_key="sources/x"),
        landmarks=common_pb2.LandmarkFingerprint(
            algorithm_version=1,
            frame_rate_hz=31.25,
            hashes=hashes.tobytes(),
            times=np.arange(200, dtype="<u4").tobytes(),
        ),
    )
    async with AsyncConnectionPool(stack.database_url, min_size=1, open=False) as pool:
        assert await Catalog(pool).reindex_track(event) is False
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM catalog.tracks WHERE track_id = %s", (gone,)
        ).fetchone()
    assert row is not None and row[0] == 0


async def test_force_selects_every_indexed_track(
    stack: StackInfo, ingest: ingest_pb2_grpc.IngestServiceStub, tracks: dict[int, str]
) -> None:
    from psycopg_pool import AsyncConnectionPool

    from earmark_ingest.submissions import Submissions

    version = ingest.Reindex(ingest_pb2.ReindexRequest(dry_run=True), timeout=30).algorithm_version
    async with AsyncConnectionPool(stack.database_url, min_size=1, open=False) as pool:
        submissions = Submissions(pool)
        indexed, outdated, _pending = await submissions.reindex_counts(version)
        assert outdated == 0  # every track of the stack is at the current version
        forced = await submissions.to_reindex(version, force=True)
        assert len(forced) == indexed and set(tracks.values()) <= set(forced)
        assert await submissions.to_reindex(version, force=False) == []
