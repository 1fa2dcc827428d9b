"""Upload -> INDEXED -> identify, over gRPC against the real stack."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bench.synthetic import add_noise, encode, song, wav_bytes
from earmark import Earmark
from earmark.aio import AsyncEarmark
from earmark_stack import StackInfo

SR = 22050
FORMATS = ["wav", "mp3", "ogg", "flac", "mp3", "wav"]


@pytest.fixture(scope="module")
def catalog(client: Earmark) -> dict[int, str]:
    """Seed -> track id for a small catalog in several formats."""
    submitted = {}
    for seed, fmt in enumerate(FORMATS):
        audio = song(seed, seconds=20)
        data = wav_bytes(audio) if fmt == "wav" else encode(audio, fmt, bitrate="64k")
        sub = client.upload(
            data,
            external_id=f"seed-{seed}.{fmt}",
            metadata={"title": f"Song {seed}", "artist": "Synth"},
        )
        assert sub.state == "RECEIVED"
        submitted[seed] = sub.submission_id
    final = client.wait(list(submitted.values()), timeout_s=120)
    assert [s.state for s in final] == ["INDEXED"] * len(FORMATS)
    return {seed: s.track_id for seed, s in zip(submitted, final, strict=True)}


def test_every_service_reports_serving_and_reflection(stack: StackInfo) -> None:
    for name, entry in stack.services.items():
        with grpc.insecure_channel(str(entry["addr"])) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING, name
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            names = {s.name for r in replies for s in r.list_services_response.service}
            if name != "transcoder":  # a worker: health and reflection only
                assert f"earmark.v1.{name.capitalize()}Service" in names
            assert "grpc.health.v1.Health" in names


def test_catalog_lists_indexed_tracks(client: Earmark, catalog: dict[int, str]) -> None:
    tracks = {t.track_id: t for t in client.tracks()}
    assert set(catalog.values()) <= set(tracks)
    track = tracks[catalog[1]]
    assert track.title == "Song 1" and track.artist == "Synth"
    assert track.duration_s == pytest.approx(20, abs=0.2)
    assert track.landmark_count > 100


def test_indexed_tracks_keep_their_spectral_peaks(
    stack: StackInfo, catalog: dict[int, str]
) -> None:
    # What peak verification reads: sorted uint32 keys, ~29 peaks per second.
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute(
            "SELECT f.peaks, t.duration_s FROM catalog.fingerprints f "
            "JOIN catalog.tracks t USING (track_key) WHERE t.track_id = %s",
            (catalog[1],),
        ).fetchone()
    assert row is not None
    keys = np.frombuffer(row[0], dtype="<u4")
    assert 10 * row[1] < keys.size < 40 * row[1]
    assert np.all(np.diff(keys.astype(np.int64)) > 0)


@pytest.mark.parametrize("seed,offset_s", [(0, 3.0), (3, 11.5), (5, 7.25)])
def test_identifies_noisy_mp3_clip_with_offset(
    client: Earmark, catalog: dict[int, str], seed: int, offset_s: float
) -> None:
    audio = song(seed, seconds=20)
    clip = audio[int(offset_s * SR) : int((offset_s + 5) * SR)]
    noisy = add_noise(clip, snr_db=10, seed=seed)
    result = client.identify(encode(noisy, "mp3", bitrate="64k"))
    assert result.match is not None
    assert result.match.track_id == catalog[seed]
    assert result.match.offset_s == pytest.approx(offset_s, abs=0.1)
    assert result.match.confidence > 0.5


def test_clip_not_in_catalog_returns_no_match(client: Earmark, catalog: dict[int, str]) -> None:
    stranger = song(1000, seconds=8)[SR:]
    result = client.identify(wav_bytes(stranger))
    assert result.match is None


def test_asyncio_client_identifies_concurrently(stack: StackInfo, catalog: dict[int, str]) -> None:
    async def run() -> list[str | None]:
        async with AsyncEarmark(ingest=stack.addr("ingest"), search=stack.addr("search")) as em:
            clips = [wav_bytes(song(s, seconds=20)[5 * SR : 9 * SR]) for s in (0, 1, 2, 4)]
            results = await asyncio.gather(*(em.identify(c) for c in clips))
            return [r.match.track_id if r.match else None for r in results]

    assert asyncio.run(run()) == [catalog[s] for s in (0, 1, 2, 4)]


def test_features_are_computed_for_indexed_tracks(client: Earmark, catalog: dict[int, str]) -> None:
    import time

    deadline = time.monotonic() + 120
    while True:
        try:
            features = client.features(catalog[2])
            break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert features.duration_s == pytest.approx(20, abs=0.2)
    assert -30 < features.loudness_dbfs < 0
    assert 100 < features.spectral_centroid_hz < 5000


def test_delete_removes_track_from_identification(client: Earmark) -> None:
    audio = song(77, seconds=15)
    sub = client.upload(wav_bytes(audio), external_id="to-delete")
    (final,) = client.wait([sub.submission_id], timeout_s=60)
    assert final.state == "INDEXED"
    clip = wav_bytes(audio[2 * SR : 7 * SR])
    assert client.identify(clip).match is not None
    client.delete_track(final.track_id)
    assert client.identify(clip).match is None
    with pytest.raises(grpc.RpcError) as err:
        client.track(final.track_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_identify_rejects_bad_clips(client: Earmark) -> None:
    for clip, fragment in [(b"", "empty"), (b"hello, this is text", "not decodable")]:
        with pytest.raises(grpc.RpcError) as err:
            client.identify(clip)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in (err.value.details() or "")
    long_clip = wav_bytes(np.zeros(61 * 8000, dtype=np.float32) + 0.1, sample_rate=8000)
    with pytest.raises(grpc.RpcError) as err:
        client.identify(long_clip)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _mix(
    pieces: list[tuple[int, float, float]], gap_s: float, fade_s: float
) -> tuple[np.ndarray, list[float]]:
    """Concatenate (seed, from_s, to_s) excerpts; odd joins are gaps, even joins crossfades.

    Returns the mix, where each piece starts as a monitoring report times it
    (after a gap, its first sample; in a crossfade, the midpoint, where the
    incoming track becomes the louder one), and where its first sample lies.
    """
    out = np.zeros(0, dtype=np.float32)
    starts: list[float] = []
    origins: list[float] = []
    fade = int(fade_s * SR)
    for n, (seed, a, b) in enumerate(pieces):
        piece = song(seed, seconds=20)[int(a * SR) : int(b * SR)].copy()
        if n == 0:
            starts.append(0.0)
            origins.append(0.0)
            out = piece
        elif n % 2 == 1:
            out = np.concatenate([out, np.zeros(int(gap_s * SR), dtype=np.float32)])
            starts.append(len(out) / SR)
            origins.append(len(out) / SR)
            out = np.concatenate([out, piece])
        else:
            ramp = np.linspace(0, 1, fade, dtype=np.float32)
            starts.append((len(out) - fade / 2) / SR)
            origins.append((len(out) - fade) / SR)
            head = piece[:fade] * ramp
            out[-fade:] = out[-fade:] * ramp[::-1] + head
            out = np.concatenate([out, piece[fade:]])
    return out, starts, origins


def test_scan_reports_every_track_of_a_mix_in_order(
    client: Earmark, catalog: dict[int, str]
) -> None:
    pieces = [(0, 0.0, 20.0), (3, 2.0, 18.0), (1, 0.0, 20.0), (5, 4.0, 20.0), (2, 1.0, 19.0)]
    mix, starts, origins = _mix(pieces, gap_s=2.0, fade_s=2.0)
    entries = client.scan(encode(mix, "mp3", bitrate="128k"))
    assert [e.track_id for e in entries] == [catalog[seed] for seed, _, _ in pieces]
    for entry, start, origin, (_, from_s, _) in zip(entries, starts, origins, pieces, strict=True):
        assert entry.start_s == pytest.approx(start, abs=1.0)
        assert entry.track_offset_s == pytest.approx(from_s + entry.start_s - origin, abs=0.2)
        assert entry.confidence > 0.5


def test_scan_of_unknown_music_reports_nothing(client: Earmark, catalog: dict[int, str]) -> None:
    assert client.scan(wav_bytes(song(4242, seconds=30))) == []


def test_identifies_a_sped_up_clip_and_reports_its_scale(
    stack: StackInfo, catalog: dict[int, str]
) -> None:
    """Radio plays tracks ~3 % fast: the plain landmarks miss, the rescue finds it."""
    from scipy import signal

    from earmark.v1 import common_pb2, search_pb2, search_pb2_grpc

    original = song(2, seconds=20)[int(4.0 * SR) : int(10.5 * SR)]
    sped_up = signal.resample(original, round(original.size / 1.03)).astype(np.float32)
    with grpc.insecure_channel(stack.addr("search")) as channel:
        reply = search_pb2_grpc.SearchServiceStub(channel).Identify(
            search_pb2.IdentifyRequest(
                audio=common_pb2.AudioInput(encoded=wav_bytes(sped_up[: 6 * SR]))
            ),
            timeout=30,
        )
    assert reply.matches, "sped-up clip not identified"
    assert reply.matches[0].track.track_id == catalog[2]
    assert abs(np.log(reply.matches[0].frequency_scale / 1.03)) <= np.log(1.01)
    t = reply.timings
    assert t.rescue_ms > 0 and min(t.rescue_extract_ms, t.rescue_lookup_ms, t.rescue_vote_ms) > 0
    assert t.rescue_extract_ms + t.rescue_lookup_ms + t.rescue_vote_ms <= t.rescue_ms
    assert reply.matches[0].offset_s == pytest.approx(4.0, abs=0.5)
