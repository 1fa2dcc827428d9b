"""Search uses neural vectors only when the model that made them is the one it indexes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from earmark.v1 import common_pb2
from earmark_search.app import SearchServicer


def servicer(indexed_model: str) -> SearchServicer:
    none: Any = None
    segments: Any = SimpleNamespace(model=indexed_model)
    return SearchServicer(none, none, none, segments)


def vectors(model: str) -> common_pb2.NeuralFingerprint:
    v = np.eye(2, 4, dtype="<f4")
    return common_pb2.NeuralFingerprint(
        model=model,
        dim=4,
        hop_s=0.125,
        vectors=v.tobytes(),
        times=np.array([0.0, 0.125], dtype="<f4").tobytes(),
    )


def test_query_vectors_of_the_indexed_model_are_searched() -> None:
    query = servicer("nafp-small-v2")._neural_query(vectors("nafp-small-v2"))
    assert query is not None
    assert query.vectors.shape == (2, 4)
    np.testing.assert_allclose(query.times_s, [0.0, 0.125])


def test_query_vectors_of_another_model_are_not_searched() -> None:
    assert servicer("nafp-small-v2")._neural_query(vectors("nafp-small-v1")) is None
