"""Features and similarity over gRPC against the real stack, on generated audio."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.synthetic import wav_bytes
from earmark import Earmark, features_cli
from earmark.features import FeaturesClient
from earmark_features import testsignals
from earmark_stack import StackInfo

SR = testsignals.SAMPLE_RATE_HZ
SECONDS = 20.0
# Two "families": drum loops with known tempo, chord progressions with known key.
LOOPS = {"loop-96": 96.0, "loop-100": 100.0, "loop-128": 128.0}
CHORDS = {"chords-C": ("C", "major"), "chords-Am": ("A", "minor"), "chords-G": ("G", "major")}


def _wav(x: np.ndarray) -> bytes:
    # bench.synthetic.wav_bytes writes 22.05 kHz by default; keep 44.1 kHz here.
    return wav_bytes(x, sample_rate=SR)


def _audio(name: str) -> np.ndarray:
    if name in LOOPS:
        return testsignals.drum_loop(LOOPS[name], SECONDS, seed=len(name))
    tonic, scale = CHORDS[name]
    return testsignals.chord_progression(tonic, scale, SECONDS, seed=3)


def _wait_features(fc: FeaturesClient, track_id: str, timeout_s: float = 180.0) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fc.get(track_id)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.fixture(scope="module")
def fc(stack: StackInfo) -> Iterator[FeaturesClient]:
    with FeaturesClient(stack.addr("features")) as client:
        yield client


@pytest.fixture(scope="module")
def described(client: Earmark, fc: FeaturesClient) -> dict[str, str]:
    """name -> track id, every track described and indexed."""
    subs = {
        name: client.upload(_wav(_audio(name)), external_id=f"features-{name}").submission_id
        for name in [*LOOPS, *CHORDS]
    }
    final = client.wait(list(subs.values()), timeout_s=180)
    assert [s.state for s in final] == ["INDEXED"] * len(subs)
    ids = {name: s.track_id for name, s in zip(subs, final, strict=True)}
    for track_id in ids.values():
        _wait_features(fc, track_id)
    return ids


def test_features_health_includes_milvus(stack: StackInfo) -> None:
    with grpc.insecure_channel(stack.addr("features")) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="earmark.v1.FeaturesService"), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_descriptors_of_generated_tracks(fc: FeaturesClient, described: dict[str, str]) -> None:
    for name, bpm in LOOPS.items():
        f = fc.get(described[name])
        assert abs(f.rhythm.bpm - bpm) / bpm <= 0.02, (name, f.rhythm)
        assert f.schema_version == 2 and f.extractor_version.startswith("earmark-essentia-")
        assert f.duration_s == pytest.approx(SECONDS, abs=0.1)
    for name, (tonic, scale) in CHORDS.items():
        f = fc.get(described[name])
        assert (f.tonality.key, f.tonality.scale) == (tonic, scale), name
        assert -40 < f.loudness.integrated_lufs < 0
        assert len(f.spectral.mfcc_mean) == 13 and len(f.tonality.hpcp_mean) == 12


def test_similar_ranks_same_family_first_and_says_why(
    fc: FeaturesClient, described: dict[str, str]
) -> None:
    ours = set(described.values())
    hits = [h for h in fc.similar(described["loop-96"], k=20) if h.track_id in ours]
    assert described["loop-96"] not in {h.track_id for h in hits}
    assert {h.track_id for h in hits[:2]} == {described["loop-100"], described["loop-128"]}
    assert hits[0].score >= hits[-1].score
    assert hits[0].reasons and hits[0].why
    assert all(-1.0 <= r.similarity <= 1.0 for r in hits[0].reasons)

    hits = [h for h in fc.similar(described["chords-C"], k=20) if h.track_id in ours]
    assert {h.track_id for h in hits[:2]} == {described["chords-Am"], described["chords-G"]}


def test_similar_filters_by_bpm_and_key(fc: FeaturesClient, described: dict[str, str]) -> None:
    hits = fc.similar(described["loop-96"], k=20, min_bpm=95, max_bpm=105)
    assert hits and all(95 <= h.bpm <= 105 for h in hits)
    assert described["loop-100"] in {h.track_id for h in hits}
    assert described["loop-128"] not in {h.track_id for h in hits}
    hits = fc.similar(described["chords-C"], k=20, key="a", scale="minor")
    assert hits and all((h.key, h.scale) == ("A", "minor") for h in hits)
    assert described["chords-Am"] in {h.track_id for h in hits}


def test_similar_to_audio_finds_the_family_of_a_clip(
    fc: FeaturesClient, described: dict[str, str]
) -> None:
    clip = testsignals.drum_loop(98.0, 8.0, seed=99)
    query, hits = fc.similar_to_audio(_wav(clip), k=20)
    assert abs(query.rhythm.bpm - 98.0) / 98.0 <= 0.02
    ours = [h.track_id for h in hits if h.track_id in set(described.values())]
    loops = {described[n] for n in LOOPS}
    assert set(ours[:3]) == loops


def test_similar_errors(fc: FeaturesClient, described: dict[str, str]) -> None:
    with pytest.raises(grpc.RpcError) as err:
        fc.similar("not-a-uuid")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        fc.similar("00000000-0000-4000-8000-000000000000")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        fc.similar(described["loop-96"], key="H")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        fc.similar_to_audio(b"not audio at all")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_deleted_track_leaves_the_similarity_index(
    client: Earmark, fc: FeaturesClient, described: dict[str, str]
) -> None:
    audio = testsignals.chord_progression("E", "minor", 12.0, seed=11)
    sub = client.upload(_wav(audio), external_id="to-forget")
    (final,) = client.wait([sub.submission_id], timeout_s=120)
    assert final.state == "INDEXED", final
    _wait_features(fc, final.track_id)
    seed_track = described["chords-Am"]
    assert final.track_id in {h.track_id for h in fc.similar(seed_track, k=100)}
    client.delete_track(final.track_id)
    deadline = time.monotonic() + 120
    while final.track_id in {h.track_id for h in fc.similar(seed_track, k=100)}:
        assert time.monotonic() < deadline, "deleted track still recommended"
        time.sleep(0.3)
    with pytest.raises(grpc.RpcError) as err:
        fc.get(final.track_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_cli_prints_descriptors_and_similar_table(
    stack: StackInfo,
    described: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EARMARK_FEATURES_ADDR", stack.addr("features"))
    parser = argparse.ArgumentParser(prog="earmark")
    features_cli.add_commands(parser.add_subparsers(dest="command", required=True))

    args = parser.parse_args(["features", described["chords-Am"]])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "A minor" in out and "krumhansl" in out and "LUFS" in out

    args = parser.parse_args(["similar", described["loop-96"], "-k", "3"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "why (closest features)" in lines[0]
    assert len(lines) == 2 + 3

    args = parser.parse_args(["similar", described["loop-96"], "-k", "2", "--json"])
    assert args.func(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and {"track_id", "score", "reasons"} <= set(rows[0])


def _essentia_workers(service_pid: int) -> list[int]:
    """Pids of the features service's pool workers (spawned children, not its resource tracker)."""
    workers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == service_pid and b"multiprocessing.spawn" in cmdline:
            workers.append(int(entry.name))
    return workers


def test_killed_essentia_workers_cost_a_retry_not_the_track(
    client: Earmark, fc: FeaturesClient, stack: StackInfo, described: dict[str, str]
) -> None:
    """A dead worker breaks a process pool for good; the service must replace it."""
    workers = _essentia_workers(int(stack.services["features"]["pid"]))
    assert workers, "the features service runs no pool workers"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    audio = testsignals.drum_loop(110.0, SECONDS, seed=99)
    sub = client.upload(_wav(audio), external_id="features-after-kill")
    (final,) = client.wait([sub.submission_id], timeout_s=180)
    assert final.state == "INDEXED", final
    assert _wait_features(fc, final.track_id) is not None
    replaced = _essentia_workers(int(stack.services["features"]["pid"]))
    assert replaced and not set(replaced) & set(workers)
