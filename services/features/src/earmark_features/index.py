"""The similarity index in Milvus: one normalised vector per track, plus filter fields.

`uri` is a Milvus server ("http://milvus:19530") or a Milvus Lite file
("/path/milvus.db"), which pymilvus serves from a gRPC server thread inside this
process; `close` stops that thread. The collection name carries
SIMILARITY_VERSION, so a new vector layout starts a new collection, which the
service back-fills from the descriptors in PostgreSQL.

Calls are synchronous (pymilvus); the service runs them in a worker thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pymilvus import DataType

from earmark.v1 import features_pb2
from earmark_runtime import milvus

from . import similarity
from .descriptors import normalise_key

log = logging.getLogger(__name__)

COLLECTION = "tracks_" + similarity.SIMILARITY_VERSION.replace("-", "_").replace(".", "_")
_FIELDS = ["track_id", "vec", "bpm", "key", "scale", "lufs", "centroid"]


class TrackNotIndexed(KeyError):
    """The track has no vector in the index."""


class BadFilter(ValueError):
    """A filter value the index cannot use."""


@dataclass(frozen=True)
class Hit:
    track_id: str
    score: float
    info: similarity.Neighbour
    reasons: list[features_pb2.FeatureReason]


def filter_expression(f: features_pb2.SimilarFilter | None, exclude: str | None = None) -> str:
    """Milvus boolean expression for a filter; every value is validated, never pasted raw."""
    parts: list[str] = []
    if exclude:
        if not all(c in "0123456789abcdef-" for c in exclude.lower()) or len(exclude) > 36:
            raise BadFilter(f"bad track id {exclude!r}")
        parts.append(f'track_id != "{exclude}"')
    if f is not None:
        if f.min_bpm < 0 or f.max_bpm < 0:
            raise BadFilter("BPM bounds must be >= 0")
        if f.min_bpm and f.max_bpm and f.min_bpm > f.max_bpm:
            raise BadFilter(f"min_bpm {f.min_bpm:g} > max_bpm {f.max_bpm:g}")
        if f.min_bpm:
            parts.append(f"bpm >= {float(f.min_bpm)!r}")
        if f.max_bpm:
            parts.append(f"bpm <= {float(f.max_bpm)!r}")
        if f.key:
            try:
                parts.append(f'key == "{normalise_key(f.key)}"')
            except ValueError as exc:
                raise BadFilter(str(exc)) from exc
        if f.scale:
            scale = f.scale.strip().lower()
            if scale not in ("major", "minor"):
                raise BadFilter(f"scale must be major or minor, got {f.scale!r}")
            parts.append(f'scale == "{scale}"')
    return " and ".join(parts)


def _neighbour(entity: dict[str, object]) -> similarity.Neighbour:
    return similarity.Neighbour(
        bpm=float(entity.get("bpm") or 0.0),  # type: ignore[arg-type]
        key=str(entity.get("key") or ""),
        scale=str(entity.get("scale") or ""),
        integrated_lufs=float(entity.get("lufs") or 0.0),  # type: ignore[arg-type]
        centroid_hz=float(entity.get("centroid") or 0.0),  # type: ignore[arg-type]
    )


def neighbour_of(f: features_pb2.TrackFeatures) -> similarity.Neighbour:
    return similarity.Neighbour(
        bpm=f.rhythm.bpm,
        key=f.tonality.key,
        scale=f.tonality.scale,
        integrated_lufs=f.loudness.integrated_lufs,
        centroid_hz=f.spectral.centroid_hz.mean,
    )


class SimilarityIndex:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.lite = milvus.is_lite(uri)
        self._client = milvus.connect(uri)
        self._ensure_collection()

    def _ensure_collection(self) -> None:
        if self._client.has_collection(COLLECTION):
            self._client.load_collection(COLLECTION)
            return
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("track_id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=similarity.DIM)
        schema.add_field("bpm", DataType.FLOAT)
        schema.add_field("key", DataType.VARCHAR, max_length=4)
        schema.add_field("scale", DataType.VARCHAR, max_length=8)
        schema.add_field("lufs", DataType.FLOAT)
        schema.add_field("centroid", DataType.FLOAT)
        params = self._client.prepare_index_params()
        if self.lite:
            params.add_index("vec", index_type="FLAT", metric_type="IP")
        else:
            params.add_index(
                "vec", index_type="HNSW", metric_type="IP", params={"M": 16, "efConstruction": 200}
            )
        self._client.create_collection(COLLECTION, schema=schema, index_params=params)
        self._client.load_collection(COLLECTION)
        log.info(
            "created Milvus collection %s (dim %d) at %s", COLLECTION, similarity.DIM, self.uri
        )

    def ping(self) -> bool:
        return COLLECTION in self._client.list_collections(timeout=milvus.PING_TIMEOUT_S)

    def count(self) -> int:
        stats = self._client.get_collection_stats(COLLECTION)
        return int(stats.get("row_count", 0))

    def has(self, track_ids: list[str]) -> set[str]:
        if not track_ids:
            return set()
        rows = self._client.get(
            COLLECTION, ids=track_ids, output_fields=["track_id"], timeout=milvus.CALL_TIMEOUT_S
        )
        return {str(r["track_id"]) for r in rows}

    @staticmethod
    def _row(track_id: str, f: features_pb2.TrackFeatures) -> dict[str, object]:
        return {
            "track_id": track_id,
            "vec": similarity.vector(f).tolist(),
            "bpm": float(f.rhythm.bpm),
            "key": f.tonality.key,
            "scale": f.tonality.scale,
            "lufs": float(f.loudness.integrated_lufs),
            "centroid": float(f.spectral.centroid_hz.mean),
        }

    def upsert(self, track_id: str, f: features_pb2.TrackFeatures) -> None:
        self._client.upsert(COLLECTION, [self._row(track_id, f)], timeout=milvus.CALL_TIMEOUT_S)

    def upsert_many(self, items: list[tuple[str, features_pb2.TrackFeatures]]) -> None:
        for start in range(0, len(items), 500):
            rows = [self._row(t, f) for t, f in items[start : start + 500]]
            self._client.upsert(COLLECTION, rows, timeout=milvus.CALL_TIMEOUT_S)

    def delete(self, track_id: str) -> None:
        self._client.delete(COLLECTION, ids=[track_id], timeout=milvus.CALL_TIMEOUT_S)

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        flt: features_pb2.SimilarFilter | None = None,
        exclude: str | None = None,
        query_info: similarity.Neighbour | None = None,
    ) -> list[Hit]:
        results = self._client.search(
            COLLECTION,
            data=[query.astype(np.float32).tolist()],
            limit=k,
            filter=filter_expression(flt, exclude),
            output_fields=_FIELDS,
            search_params={"metric_type": "IP", "params": {} if self.lite else {"ef": 64}},
            timeout=milvus.CALL_TIMEOUT_S,
        )
        hits = []
        for r in results[0] if results else []:
            entity = r.get("entity", {})
            info = _neighbour(entity)
            reasons = []
            if query_info is not None and entity.get("vec") is not None:
                cand = np.asarray(entity["vec"], dtype=np.float32)
                reasons = similarity.explain(query, query_info, cand, info)
            hits.append(
                Hit(str(r.get("id", entity.get("track_id"))), float(r["distance"]), info, reasons)
            )
        return hits

    def vector_of(self, track_id: str) -> tuple[np.ndarray, similarity.Neighbour]:
        rows = self._client.get(
            COLLECTION, ids=[track_id], output_fields=_FIELDS, timeout=milvus.CALL_TIMEOUT_S
        )
        if not rows:
            raise TrackNotIndexed(track_id)
        return np.asarray(rows[0]["vec"], dtype=np.float32), _neighbour(rows[0])

    def similar(
        self, track_id: str, k: int, flt: features_pb2.SimilarFilter | None = None
    ) -> list[Hit]:
        vec, info = self.vector_of(track_id)
        return self.search(vec, k, flt=flt, exclude=track_id, query_info=info)

    def close(self) -> None:
        milvus.close(self._client, self.uri)
