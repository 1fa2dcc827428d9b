"""How identify reads postings: a budget of the rarest hashes first, then a larger
budget (never the whole index) when nothing matched within the first."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from earmark.v1 import common_pb2, search_pb2
from earmark_fingerprint.extraction import to_proto
from earmark_fingerprint.landmarks import SAMPLE_RATE_HZ, extract_query_landmarks
from earmark_search.catalog import Postings, TrackRow
from earmark_search.identify import (
    LONG_CLIP_LANDMARKS,
    POSTINGS_PER_QUERY_HASH,
    RETRY_POSTINGS_PER_QUERY_HASH,
    identify,
)
from tests.unit.test_landmarks import TRACK_KEY_BASE, catalog


class BudgetedCatalog:
    """The catalog as identify sees it, over in-memory postings; a budget below
    `generous` reads nothing (as if the clip's hashes were all common ones)."""

    def __init__(self, generous: int) -> None:
        _, self.hashes, self.keys, self.times = catalog()
        self.generous = generous
        self.budgets: list[int] = []

    async def rarest_postings(
        self, hashes: np.ndarray, max_postings: int, *, parts: int = 1
    ) -> tuple[Postings, int]:
        self.budgets.append(max_postings)
        wanted = np.unique(hashes)
        if max_postings < self.generous:
            nothing = np.empty(0, np.int64)
            return (np.empty(0, "<u4"), nothing, nothing), int(wanted.size)
        rows = np.isin(self.hashes, wanted)
        return (self.hashes[rows], self.keys[rows], self.times[rows].astype(np.int64)), 0

    async def postings(self, hashes: np.ndarray) -> Postings:
        raise AssertionError("identify must not read every posting")

    async def tracks_by_key(self, keys: list[int]) -> dict[int, TrackRow]:
        return {k: _row(k) for k in keys}


def _row(key: int) -> TrackRow:
    return TrackRow(key, f"track-{key}", "", "", "", "", "", {}, 60.0, "", "wav", 0, 0.0, [])


def _clip_landmarks() -> common_pb2.LandmarkFingerprint:
    track = catalog()[0][0]
    clip = track[10 * SAMPLE_RATE_HZ : 15 * SAMPLE_RATE_HZ]
    fingerprint: common_pb2.LandmarkFingerprint = to_proto(extract_query_landmarks(clip))
    return fingerprint


def test_a_clip_unmatched_within_the_budget_is_retried_with_a_larger_one() -> None:
    landmarks = _clip_landmarks()
    distinct = int(np.unique(np.frombuffer(landmarks.hashes, "<u4")).size)
    fake = BudgetedCatalog(generous=RETRY_POSTINGS_PER_QUERY_HASH * distinct)
    response = asyncio.run(
        identify(fake, landmarks, 1, method=search_pb2.IDENTIFY_METHOD_LANDMARKS)  # type: ignore[arg-type]
    )
    assert fake.budgets == [
        POSTINGS_PER_QUERY_HASH * distinct,
        RETRY_POSTINGS_PER_QUERY_HASH * distinct,
    ]
    assert [m.track.track_id for m in response.matches] == [f"track-{TRACK_KEY_BASE}"]


def test_a_clip_matched_within_the_budget_reads_once() -> None:
    landmarks = _clip_landmarks()
    fake = BudgetedCatalog(generous=0)
    response = asyncio.run(
        identify(fake, landmarks, 1, method=search_pb2.IDENTIFY_METHOD_LANDMARKS)  # type: ignore[arg-type]
    )
    assert len(fake.budgets) == 1
    assert [m.track.track_id for m in response.matches] == [f"track-{TRACK_KEY_BASE}"]


class FixedCatalog:
    """Given postings, all of them within any budget."""

    def __init__(self, postings: Postings) -> None:
        self._postings = postings

    async def rarest_postings(
        self, hashes: np.ndarray, max_postings: int, *, parts: int = 1
    ) -> tuple[Postings, int]:
        return self._postings, 0

    async def tracks_by_key(self, keys: list[int]) -> dict[int, TrackRow]:
        return {k: _row(k) for k in keys}


def _two_track_catalog() -> FixedCatalog:
    """Track 1 aligns 22 query landmarks at offset 100, track 2 aligns 10 at 50:
    the best track beats its runner-up 2.2 times."""
    first, second = np.arange(22), np.arange(22, 32)
    hashes = np.concatenate([first, second]).astype("<u4")
    tracks = np.concatenate([np.full(22, 1), np.full(10, 2)]).astype(np.int64)
    times = np.concatenate([first + 100, second + 50]).astype(np.int64)
    return FixedCatalog((hashes, tracks, times))


@pytest.mark.parametrize(
    ("landmark_count", "found"), [(LONG_CLIP_LANDMARKS - 1, True), (LONG_CLIP_LANDMARKS, False)]
)
def test_a_clip_with_many_landmarks_must_beat_its_runner_up_by_more(
    landmark_count: int, found: bool
) -> None:
    # Query landmark i has hash i at frame i; only the first 32 hashes are in
    # the catalog, so the vote is the same whatever the clip's length.
    landmarks = common_pb2.LandmarkFingerprint(
        hashes=np.arange(landmark_count, dtype="<u4").tobytes(),
        times=np.arange(landmark_count, dtype="<u4").tobytes(),
        frame_rate_hz=31.25,
        duration_s=landmark_count / 31.25,
    )
    response = asyncio.run(
        identify(
            _two_track_catalog(),  # type: ignore[arg-type]
            landmarks,
            1,
            method=search_pb2.IDENTIFY_METHOD_LANDMARKS,
        )
    )
    assert [m.track.track_id for m in response.matches] == (["track-1"] if found else [])
