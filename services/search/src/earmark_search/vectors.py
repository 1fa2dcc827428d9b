"""The neural segment index in Milvus: one vector per catalog track segment.

`uri` is a Milvus server ("http://milvus:19530", Kubernetes) or a Milvus Lite
file ("/path/segments.db", the embedded stack); both go through the same
pymilvus calls, only the index type differs (see ``index_for``). The collection
name carries the model name, so a new model starts a new collection, which
re-indexing fills.

Rows: ``pk`` = ``track_key << SEGMENT_BITS | segment index`` (deterministic,
so writing a track twice writes the same rows: upsert, then delete whatever
segments the previous version had beyond the new count), ``track_key`` (the
catalog's integer key), ``segment_time`` (seconds from the track's start) and
``vec`` (unit length; inner product = cosine similarity).

Calls are synchronous (pymilvus); the service runs them in a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from pymilvus import DataType

from earmark_runtime import milvus

from .vector_matching import Hit

log = logging.getLogger(__name__)

DEFAULT_MODEL: Final = "nafp-small-v2"
DEFAULT_DIM: Final = 128
# 2**20 segments per track: 145 h at a 0.5 s hop.
SEGMENT_BITS: Final = 20
MAX_SEGMENTS: Final = 1 << SEGMENT_BITS
# pymilvus turns rows into one gRPC message; keep each well under its 64 MB cap.
WRITE_BATCH: Final = 4096
# Milvus' limit on query vectors per search request.
MAX_NQ: Final = 16384


def collection_name(model: str) -> str:
    return "segments_" + "".join(c if c.isalnum() else "_" for c in model)


@dataclass(frozen=True)
class IndexChoice:
    index_type: str
    build_params: dict[str, Any] = field(default_factory=dict)
    search_params: dict[str, Any] = field(default_factory=dict)


# Measured against exact search on the corpus' segment vectors (docs/neural.md,
# "Vector index"). Lite: IVF_FLAT, 256 lists, 32 probed: a catalog of a few
# hundred hours (~10^6 segments) stays in one file with recall@20 near exact.
# Server: HNSW, which keeps recall high at 10^7+ segments with millisecond
# searches; its graph costs ~M * 8 bytes per vector on top of the 512 B vector.
LITE_INDEX: Final = IndexChoice("IVF_FLAT", {"nlist": 256}, {"nprobe": 32})
SERVER_INDEX: Final = IndexChoice("HNSW", {"M": 16, "efConstruction": 200}, {"ef": 128})


def index_for(uri: str) -> IndexChoice:
    return LITE_INDEX if milvus.is_lite(uri) else SERVER_INDEX


def segment_keys(track_key: int, count: int) -> npt.NDArray[np.int64]:
    if not 0 <= track_key < (1 << (63 - SEGMENT_BITS)):
        raise ValueError(f"track_key {track_key} out of range")
    if count > MAX_SEGMENTS:
        raise ValueError(f"{count} segments exceed the {MAX_SEGMENTS} a track may have")
    return (np.int64(track_key) << SEGMENT_BITS) + np.arange(count, dtype=np.int64)


class SegmentStore:
    def __init__(
        self,
        uri: str,
        *,
        model: str = DEFAULT_MODEL,
        dim: int = DEFAULT_DIM,
        index: IndexChoice | None = None,
    ) -> None:
        self.uri = uri
        self.lite = milvus.is_lite(uri)
        self.dim = dim
        self.model = model
        self.collection = collection_name(model)
        self.index = index or index_for(uri)
        self._client = milvus.connect(uri)
        self._ensure_collection()

    def _ensure_collection(self) -> None:
        if self._client.has_collection(self.collection):
            self._client.load_collection(self.collection)
            return
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.INT64, is_primary=True)
        schema.add_field("track_key", DataType.INT64)
        schema.add_field("segment_time", DataType.FLOAT)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=self.dim)
        params = self._client.prepare_index_params()
        params.add_index(
            "vec",
            index_type=self.index.index_type,
            metric_type="IP",
            params=self.index.build_params,
        )
        self._client.create_collection(self.collection, schema=schema, index_params=params)
        self._client.load_collection(self.collection)
        log.info(
            "created Milvus collection %s (dim %d, %s) at %s",
            self.collection,
            self.dim,
            self.index.index_type,
            self.uri,
        )

    def ping(self) -> bool:
        return self.collection in self._client.list_collections(timeout=milvus.PING_TIMEOUT_S)

    def count(self) -> int:
        rows = self._client.query(
            self.collection,
            filter="",
            output_fields=["count(*)"],
            consistency_level="Strong",
            timeout=milvus.CALL_TIMEOUT_S,
        )
        return int(rows[0]["count(*)"]) if rows else 0

    def has_track(self, track_key: int) -> bool:
        """Whether any segment of the track is stored (a catalog indexed before the
        neural model changed has none until it is re-indexed)."""
        rows = self._client.query(
            self.collection,
            filter=f"track_key == {int(track_key)}",
            output_fields=["pk"],
            limit=1,
            consistency_level="Strong",
            timeout=milvus.CALL_TIMEOUT_S,
        )
        return bool(rows)

    def write_track(self, track_key: int, times_s: npt.ArrayLike, vectors: npt.ArrayLike) -> int:
        """Make the track's rows exactly these segments; idempotent. Returns rows written."""
        times = np.asarray(times_s, dtype=np.float32)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != self.dim or vecs.shape[0] != times.size:
            raise ValueError(f"expected [{times.size}, {self.dim}] vectors, got {vecs.shape}")
        keys = segment_keys(track_key, times.size)
        for lo in range(0, times.size, WRITE_BATCH):
            hi = min(lo + WRITE_BATCH, times.size)
            rows = [
                {"pk": int(k), "track_key": int(track_key), "segment_time": float(t), "vec": v}
                for k, t, v in zip(
                    keys[lo:hi].tolist(), times[lo:hi].tolist(), vecs[lo:hi], strict=True
                )
            ]
            self._client.upsert(self.collection, rows, timeout=milvus.CALL_TIMEOUT_S)
        # A shorter new version leaves the old tail behind: drop it.
        first_stale = int((np.int64(track_key) << SEGMENT_BITS) + times.size)
        last = int((np.int64(track_key) << SEGMENT_BITS) + MAX_SEGMENTS)
        self._client.delete(
            self.collection,
            filter=f"pk >= {first_stale} and pk < {last}",
            timeout=milvus.CALL_TIMEOUT_S,
        )
        return int(times.size)

    def flush(self) -> None:
        """Seal what was written so the index gets built (Milvus also seals on its own)."""
        self._client.flush(self.collection, timeout=milvus.CALL_TIMEOUT_S)

    def delete_track(self, track_key: int) -> None:
        self._client.delete(
            self.collection, filter=f"track_key == {int(track_key)}", timeout=milvus.CALL_TIMEOUT_S
        )

    def track_segments(
        self, track_key: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """(times, vectors) stored for a track, in segment order (tests, re-checks)."""
        rows = self._client.query(
            self.collection,
            filter=f"track_key == {int(track_key)}",
            output_fields=["pk", "segment_time", "vec"],
            consistency_level="Strong",
            timeout=milvus.CALL_TIMEOUT_S,
        )
        rows.sort(key=lambda r: int(r["pk"]))
        times = np.array([r["segment_time"] for r in rows], dtype=np.float32)
        vecs = np.array([r["vec"] for r in rows], dtype=np.float32).reshape(-1, self.dim)
        return times, vecs

    def search(self, queries: npt.ArrayLike, k: int) -> list[list[Hit]]:
        """Top-k (track_key, segment_time, similarity) per query vector; one request per 16k."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"expected [n, {self.dim}] query vectors, got {q.shape}")
        out: list[list[Hit]] = []
        for lo in range(0, q.shape[0], MAX_NQ):
            results = self._client.search(
                self.collection,
                data=list(q[lo : lo + MAX_NQ]),
                limit=k,
                output_fields=["track_key", "segment_time"],
                search_params={"metric_type": "IP", "params": self.index.search_params},
                consistency_level="Strong",
                timeout=milvus.CALL_TIMEOUT_S,
            )
            out.extend(_hits(r) for r in results)
        return out

    def close(self) -> None:
        milvus.close(self._client, self.uri)


def _hits(result: Sequence[dict[str, Any]]) -> list[Hit]:
    hits: list[Hit] = []
    for r in result:
        entity = r.get("entity", {})
        hits.append((int(entity["track_key"]), float(entity["segment_time"]), float(r["distance"])))
    return hits
