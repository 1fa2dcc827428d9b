"""The neural segment store on a real Milvus Lite file (no stack, no mocks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from earmark_search.vectors import IndexChoice, SegmentStore, segment_keys

DIM = 128


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SegmentStore]:
    # FLAT keeps this small test exact; the IVF / HNSW choices are measured in
    # earmark_training.evaluate --milvus.
    s = SegmentStore(str(tmp_path / "segments.db"), dim=DIM, index=IndexChoice("FLAT"))
    yield s
    s.close()


def test_write_rewrite_search_delete(store: SegmentStore) -> None:
    rng = np.random.default_rng(0)
    a, b = unit(rng.standard_normal((40, DIM))), unit(rng.standard_normal((30, DIM)))
    times_a, times_b = np.arange(40) * 0.5, np.arange(30) * 0.5
    assert store.write_track(11, times_a, a) == 40
    store.write_track(12, times_b, b)
    assert store.count() == 70

    # Writing the same track again changes nothing.
    store.write_track(11, times_a, a)
    assert store.count() == 70
    got_t, got_v = store.track_segments(11)
    np.testing.assert_allclose(got_t, times_a)
    np.testing.assert_allclose(got_v, a, atol=1e-6)

    # A shorter new version of a track leaves no stale segments behind.
    store.write_track(11, times_a[:25], a[:25])
    assert store.count() == 55
    assert store.track_segments(11)[0].size == 25

    # One call searches every query segment; each finds its own segment first.
    hits = store.search(np.stack([a[3], b[17], a[24]]), k=5)
    assert [h[0][:2] for h in hits] == [(11, 1.5), (12, 8.5), (11, 12.0)]
    assert all(h[0][2] == pytest.approx(1.0, abs=1e-4) for h in hits)
    assert all(len(h) == 5 for h in hits)

    assert store.has_track(11) and store.has_track(12) and not store.has_track(13)
    store.delete_track(11)
    assert store.count() == 30
    assert not store.has_track(11)
    assert {hit[0] for hs in store.search(a[:5], k=10) for hit in hs} == {12}


def test_rows_persist_in_the_file(tmp_path: Path) -> None:
    uri = str(tmp_path / "segments.db")
    vecs = unit(np.random.default_rng(1).standard_normal((10, DIM)))
    first = SegmentStore(uri, dim=DIM)
    first.write_track(5, np.arange(10) * 0.5, vecs)
    first.close()
    again = SegmentStore(uri, dim=DIM)
    try:
        assert again.count() == 10
        assert again.search(vecs[7:8], k=1)[0][0][:2] == (5, 3.5)
    finally:
        again.close()


def test_bad_input_is_refused(store: SegmentStore) -> None:
    with pytest.raises(ValueError):
        store.write_track(1, np.arange(3.0), np.zeros((3, DIM + 1), np.float32))
    with pytest.raises(ValueError):
        segment_keys(-1, 3)
    with pytest.raises(ValueError):
        store.search(np.zeros((2, 3), np.float32), k=1)
