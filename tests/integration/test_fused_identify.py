"""Neural segments in Milvus Lite and the fused identify, on the real stack."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from bench.degrade import pitch_shift
from bench.synthetic import song, wav_bytes
from earmark import Earmark
from earmark.v1 import common_pb2, search_pb2, search_pb2_grpc
from earmark_stack import StackInfo

SR = 22050
SEEDS = (8301, 8302, 8303)
LANDMARKS = search_pb2.IDENTIFY_METHOD_LANDMARKS
NEURAL = search_pb2.IDENTIFY_METHOD_NEURAL
FUSED = search_pb2.IDENTIFY_METHOD_FUSED


@pytest.fixture(scope="module")
def fused_catalog(client: Earmark) -> dict[int, str]:
    submitted = {
        seed: client.upload(
            wav_bytes(song(seed, seconds=30)),
            external_id=f"fused-{seed}",
            metadata={"title": f"Fused {seed}", "artist": "Synth"},
        ).submission_id
        for seed in SEEDS
    }
    final = client.wait(list(submitted.values()), timeout_s=180)
    assert [s.state for s in final] == ["INDEXED"] * len(SEEDS)
    return {seed: s.track_id for seed, s in zip(submitted, final, strict=True)}


def identify(stack: StackInfo, clip: np.ndarray, method: int) -> search_pb2.IdentifyResponse:
    with grpc.insecure_channel(stack.addr("search")) as channel:
        reply: search_pb2.IdentifyResponse = search_pb2_grpc.SearchServiceStub(channel).Identify(
            search_pb2.IdentifyRequest(
                audio=common_pb2.AudioInput(encoded=wav_bytes(clip)), method=method
            ),
            timeout=60,
        )
    return reply


def test_fused_identify_reports_both_methods(
    stack: StackInfo, fused_catalog: dict[int, str]
) -> None:
    clip = song(8302, seconds=30)[10 * SR : 15 * SR]
    reply = identify(stack, clip, FUSED)
    assert reply.matches, "no match"
    best = reply.matches[0]
    assert best.track.track_id == fused_catalog[8302]
    assert set(best.methods) == {LANDMARKS, NEURAL}
    assert best.offset_s == pytest.approx(10.0, abs=0.2)
    assert reply.timings.neural_ms > 0


def test_neural_alone_finds_the_track_in_milvus(
    stack: StackInfo, fused_catalog: dict[int, str]
) -> None:
    clip = song(8303, seconds=30)[12 * SR : 17 * SR]
    reply = identify(stack, clip, NEURAL)
    assert reply.matches, "no neural match"
    best = reply.matches[0]
    assert best.track.track_id == fused_catalog[8303]
    assert list(best.methods) == [NEURAL]
    assert best.offset_s == pytest.approx(12.0, abs=1.0)
    assert reply.postings == 0  # no landmark lookup was made
    # Found by its own vectors: no pitch views were embedded.
    assert reply.timings.neural_search_ms > 0 and reply.timings.neural_views_extract_ms == 0


def test_neural_pitch_views_find_a_transposed_clip(
    stack: StackInfo, fused_catalog: dict[int, str]
) -> None:
    """Pitched up 1.2 semitones with the tempo kept, the clip's plain vectors miss;
    the pitch views (a second extraction) find it and say by how much."""
    clip = pitch_shift(song(8302, seconds=30)[8 * SR : 14 * SR], SR, 1.2)
    reply = identify(stack, clip, NEURAL)
    assert reply.matches, "transposed clip not identified"
    best = reply.matches[0]
    assert best.track.track_id == fused_catalog[8302]
    assert best.frequency_scale == pytest.approx(2 ** (1 / 12), rel=1e-6)
    assert best.offset_s == pytest.approx(8.0, abs=1.0)
    t = reply.timings
    assert t.neural_search_ms > 0 and t.neural_views_extract_ms > 0 and t.neural_views_search_ms > 0
    parts = t.neural_search_ms + t.neural_views_extract_ms + t.neural_views_search_ms
    assert parts <= t.neural_ms


def test_out_of_catalog_clip_matches_nothing_fused(
    stack: StackInfo, fused_catalog: dict[int, str]
) -> None:
    stranger = song(7777, seconds=12)[2 * SR : 8 * SR]
    assert identify(stack, stranger, FUSED).matches == []


def test_deleting_a_track_removes_its_vectors(
    stack: StackInfo, client: Earmark, fused_catalog: dict[int, str]
) -> None:
    clip = song(8301, seconds=30)[5 * SR : 10 * SR]
    before = identify(stack, clip, NEURAL)
    assert before.matches and before.matches[0].track.track_id == fused_catalog[8301]
    client.delete_track(fused_catalog[8301])
    after = identify(stack, clip, NEURAL)
    assert all(m.track.track_id != fused_catalog[8301] for m in after.matches)
