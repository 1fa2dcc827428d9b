"""Neural audio fingerprint: 1 s segments -> 128-d L2-normalised vectors (ONNX Runtime).

The model is Earmark's own (trained by ``training/``, package
``earmark-training``, on the Debian corpus; see docs/neural.md) and ships with
this package as ONNX plus a JSON sidecar with its frontend parameters. Serving
never imports torch: features come from ``neural_frontend`` (numpy) and the
encoder runs in ONNX Runtime, on CUDA when that execution provider is
installed, on the CPU otherwise.

Catalog tracks are embedded every ``CATALOG_HOP_S``; queries use a denser hop
(``QUERY_HOP_S``) so that one of their segments lies close to a catalog
segment whatever the query's alignment, up to ``MAX_QUERY_SEGMENTS``
segments (``query_hop_s``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from . import neural_frontend as fe

MODEL_NAME: Final = "nafp-small-v2"
# Catalog segments every 0.25 s (NAFP uses 0.5 s): a 1 s query has a single
# segment, and at 0.5 s it can lie 0.25 s off every catalog segment; at 0.25 s
# at most 0.125 s, inside the training jitter. Measured on the benchmark: 1 s
# top-1 85 % vs 73 % (docs/neural.md); the index doubles to ~7.6 MB/h.
CATALOG_HOP_S: Final = 0.25
QUERY_HOP_S: Final = CATALOG_HOP_S / 2
# A query's vector search costs time in proportion to its segments (Milvus Lite
# searches by brute force, ~0.4 ms per query vector on the benchmark's 4 h
# catalog), while past a few seconds more segments add little evidence: a
# longer clip is embedded at a wider hop (``query_hop_s``). 80 keeps a 10 s clip
# at QUERY_HOP_S. The pitch views, searched only when the clip's own vectors
# match nothing, are four more searches: each gets at most 32 segments, which
# keeps a 5 s clip dense (docs/neural.md, "Hops").
MAX_QUERY_SEGMENTS: Final = 80
MAX_VIEW_SEGMENTS: Final = 32
# A clip that matches nothing as it is is searched again read at these pitch
# offsets (semitones): radio speed-ups, vinyl, transposed covers. Spaced 0.5 st,
# so no shift within +-1.25 st is more than 0.25 st from a view, well inside
# what training's speed augmentation covers. Measured on the benchmark
# (docs/neural.md): pitch +-1 st at 1 s from 25-36 % to 96-98 % top-1.
PITCH_VIEW_SEMITONES: Final = (-1.0, -0.5, 0.5, 1.0)
DEFAULT_BATCH: Final = 256
SAMPLE_RATE_HZ: Final = fe.SAMPLE_RATE_HZ

FloatArray = npt.NDArray[np.float32]


class ModelMismatch(RuntimeError):
    """The model's sidecar describes a different frontend than this code computes."""


def model_path(name: str = MODEL_NAME) -> Path:
    return Path(str(resources.files("earmark_fingerprint") / "models" / f"{name}.onnx"))


def default_providers(available: Sequence[str] | None = None) -> list[str]:
    """CUDA first when ONNX Runtime offers it, the CPU always as the fallback."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + [
        "CPUExecutionProvider"
    ]


def _check_frontend(meta: dict[str, Any]) -> None:
    want = fe.parameters()
    got = meta.get("frontend", {})
    diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    if diff:
        raise ModelMismatch(f"model frontend differs from this code (model, code): {diff}")


def hop_frames(hop_s: float) -> int:
    frames = round(hop_s * fe.SAMPLE_RATE_HZ / fe.HOP)
    if frames < 1:
        raise ValueError(f"hop {hop_s} s is shorter than one frame ({fe.HOP} samples)")
    return frames


def max_query_segments(freq_scale: float = 1.0) -> int:
    """The segment cap of a query view: the clip as it is, or a pitch view."""
    return MAX_QUERY_SEGMENTS if freq_scale == 1.0 else MAX_VIEW_SEGMENTS


def query_hop_s(n_samples: int, max_segments: int = MAX_QUERY_SEGMENTS) -> float:
    """The hop a query of ``n_samples`` is embedded at: QUERY_HOP_S while that
    gives at most ``max_segments`` segments, else the smallest (k + 1/2) *
    CATALOG_HOP_S that does. An odd multiple of half the catalog hop keeps what
    QUERY_HOP_S (k = 0) is for: every other segment lies within a quarter
    catalog hop of a catalog segment, whatever the clip's alignment."""
    span = fe.n_frames(max(n_samples, fe.SEGMENT_SAMPLES)) - fe.SEGMENT_FRAMES
    k = 0
    while span // hop_frames((k + 0.5) * CATALOG_HOP_S) + 1 > max_segments:
        k += 1
    return (k + 0.5) * CATALOG_HOP_S


@dataclass(frozen=True)
class Embeddings:
    times_s: npt.NDArray[np.float64]  # start of each segment in the input
    vectors: FloatArray  # [n, dim], unit length


def pitch_view_scales(semitones: Sequence[float] = PITCH_VIEW_SEMITONES) -> list[float]:
    """Frontend frequency scales of the pitch views (``embed(..., freq_scale=)``)."""
    return [float(2.0 ** (st / 12.0)) for st in semitones]


class NeuralEmbedder:
    """One ONNX Runtime session; ``embed`` is thread-safe (ONNX Runtime's ``run`` is)."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH,
    ) -> None:
        import onnxruntime as ort

        self.path = path or model_path()
        self.meta: dict[str, Any] = json.loads(self.path.with_suffix(".json").read_text())
        _check_frontend(self.meta)
        self.dim = int(self.meta["dim"])
        self.batch_size = batch_size
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(self.path), sess_options=options, providers=list(providers or default_providers())
        )
        self.providers: list[str] = self.session.get_providers()
        self._input = self.session.get_inputs()[0].name

    def embed_segments(self, mel_segments: FloatArray) -> FloatArray:
        """[n, N_MELS, SEGMENT_FRAMES] log-mel segments -> [n, dim] vectors, in batches."""
        out = np.empty((mel_segments.shape[0], self.dim), dtype=np.float32)
        for lo in range(0, mel_segments.shape[0], self.batch_size):
            batch = mel_segments[lo : lo + self.batch_size]
            (out[lo : lo + batch.shape[0]],) = self.session.run(None, {self._input: batch})
        return out

    def embed(
        self, samples: npt.ArrayLike, hop_s: float = CATALOG_HOP_S, freq_scale: float = 1.0
    ) -> Embeddings:
        """Segments of 8 kHz mono float audio every ``hop_s`` and their vectors.

        Audio shorter than one segment (1.03 s) is padded with silence, so a
        1 s clip still gives one vector; otherwise only whole segments count.
        ``freq_scale`` reads the audio as if pitched down by that factor
        (``neural_frontend.mel_matrix``): a query pitched up by s is embedded as
        its original with ``freq_scale=s``.
        """
        (embeddings,) = self.embed_views(samples, [(hop_s, freq_scale)])
        return embeddings

    def embed_views(
        self, samples: npt.ArrayLike, views: Sequence[tuple[float, float]]
    ) -> list[Embeddings]:
        """``embed`` at each ``(hop_s, freq_scale)`` view, the views' segments run
        through the model together: a short clip's pitch views are a few
        segments each, and a run of this small model costs about as much for
        one segment as for a batch of them."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected mono samples, got shape {x.shape}")
        if not views:
            return []
        if x.size == 0:
            empty = Embeddings(np.zeros(0), np.zeros((0, self.dim), dtype=np.float32))
            return [empty for _ in views]
        if x.size < fe.SEGMENT_SAMPLES:
            x = np.pad(x, (0, fe.SEGMENT_SAMPLES - x.size))
        starts, stacks = [], []
        for hop_s, freq_scale in views:
            mel = fe.log_mel(x, freq_scale)
            starts.append(fe.segment_starts(mel.shape[0], hop_frames(hop_s)))
            stacks.append(fe.segments(mel, starts[-1]))
        vectors = self.embed_segments(np.concatenate(stacks))
        bounds = np.cumsum([len(s) for s in starts])[:-1]
        return [
            Embeddings(fe.frame_time_s(view_starts), view_vectors)
            for view_starts, view_vectors in zip(starts, np.split(vectors, bounds), strict=True)
        ]


_lock = threading.Lock()


# One intra-op thread per run: the service runs many embeddings at once
# (gRPC calls, ingest workers), each in its own thread. A run that spread over
# every core would wait at each operator for a thread another process had
# taken: measured on 2 cores, a 1 s clip's pitch views took ~60 ms inside an
# Identify against ~6 ms alone (docs/neural.md).
SERVICE_THREADS: Final = 1


@cache
def _shared(name: str) -> NeuralEmbedder:
    return NeuralEmbedder(model_path(name), threads=SERVICE_THREADS)


def default_embedder(name: str = MODEL_NAME) -> NeuralEmbedder:
    """The shipped model, loaded once per process."""
    with _lock:
        return _shared(name)
