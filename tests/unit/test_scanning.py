"""Scanning a recording made of catalog excerpts, with an in-memory postings lookup."""

from __future__ import annotations

import asyncio

import numpy as np

from bench.synthetic import song
from earmark_fingerprint.landmarks import SAMPLE_RATE_HZ, extract_landmarks
from earmark_search.scanning import scan

SR = SAMPLE_RATE_HZ


def _catalog(seeds: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = []
    for key, seed in enumerate(seeds, start=1):
        lm = extract_landmarks(song(seed, seconds=20, sample_rate=SR))
        rows.append(
            (lm.hashes.astype(np.int64), np.full(lm.hashes.size, key), lm.times.astype(np.int64))
        )
    return tuple(np.concatenate(c) for c in zip(*rows, strict=True))  # type: ignore[return-value]


def _lookup(catalog: tuple[np.ndarray, np.ndarray, np.ndarray]):  # type: ignore[no-untyped-def]
    async def lookup(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep = np.isin(catalog[0], hashes)
        return catalog[0][keep], catalog[1][keep], catalog[2][keep]

    return lookup


def test_scan_finds_excerpts_in_order_with_times() -> None:
    catalog = _catalog([10, 11, 12])
    a = song(12, seconds=20, sample_rate=SR)[3 * SR : 15 * SR]  # track 3 from 3 s
    b = song(10, seconds=20, sample_rate=SR)[0 : 12 * SR]  # track 1 from 0 s
    silence = np.zeros(3 * SR, dtype=np.float32)
    recording = np.concatenate([a, silence, b])
    lm = extract_landmarks(recording)
    timeline = asyncio.run(scan(lm.hashes, lm.times, lm.frame_rate_hz, _lookup(catalog)))
    fps = lm.frame_rate_hz
    found = [
        (s.track_key, s.first_frame / fps, (s.first_frame + s.alignment) / fps)
        for s in timeline.segments
    ]
    assert [f[0] for f in found] == [3, 1]
    assert abs(found[0][1] - 0.0) < 1.0 and abs(found[0][2] - 3.0) < 0.2
    assert abs(found[1][1] - 15.0) < 1.0 and abs(found[1][2] - 0.0) < 0.2


def test_scan_of_music_not_in_catalog_is_empty() -> None:
    catalog = _catalog([20, 21])
    lm = extract_landmarks(song(99, seconds=30, sample_rate=SR))
    timeline = asyncio.run(scan(lm.hashes, lm.times, lm.frame_rate_hz, _lookup(catalog)))
    assert timeline.segments == []


def test_scan_of_nothing_is_empty() -> None:
    empty = np.empty(0, dtype=np.uint32)
    timeline = asyncio.run(scan(empty, empty, 31.25, _lookup(_catalog([1]))))
    assert timeline.segments == []
