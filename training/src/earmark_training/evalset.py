"""Query sets and catalog indexes for evaluating and calibrating the neural fingerprint.

Queries come from `bench.degrade.build_queries` (the landmark benchmark's own
conditions, lengths and excerpt picker), resampled to 8 kHz the way the
service does it (`resample_poly`), and are cached on disk because degrading
thousands of clips through ffmpeg takes minutes. Catalog indexes are the
shipped model's segment vectors of whole tracks, exact search in memory.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.signal import resample_poly

from bench.corpus import CorpusTrack, decode_audio
from bench.degrade import DEFAULT_SR, build_queries, conditions_by_name
from bench.report import QueryRecord
from earmark_fingerprint.neural import NeuralEmbedder, max_query_segments, query_hop_s
from earmark_search.vector_matching import (
    DEFAULT_CALIBRATION,
    PITCHED_CALIBRATION,
    Calibration,
    ExactIndex,
    QueryView,
    score_views,
)

SR = 8000
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EvalQuery:
    query_id: str
    track_id: str
    condition: str
    length_s: float
    offset_s: float
    speed: float
    loop_period_s: float | None
    negative: bool
    audio: FloatArray  # 8 kHz


def _key(parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def query_set(
    name: str,
    positives: Sequence[CorpusTrack],
    negatives: Sequence[CorpusTrack],
    babble: Sequence[CorpusTrack],
    *,
    seed: int,
    lengths: Sequence[float],
    conditions: Sequence[str] | None,
    cache_dir: Path,
    log: Callable[[str], None] = print,
) -> list[EvalQuery]:
    key = _key(
        [
            [t.track_id for t in positives],
            [t.track_id for t in negatives],
            [t.track_id for t in babble],
            seed,
            list(lengths),
            conditions,
        ]
    )
    path = cache_dir / f"queries-{name}-{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            rows = json.loads(str(z["manifest"]))
            audio = z["audio"]
            bounds = z["bounds"]
        log(f"queries: {len(rows)} from {path}")
        return [
            EvalQuery(**row, audio=audio[bounds[i] : bounds[i + 1]]) for i, row in enumerate(rows)
        ]
    t0 = time.monotonic()
    qs = build_queries(
        positives,
        lengths,
        conditions_by_name(list(conditions) if conditions else None),
        1,
        seed,
        held_out=negatives,
        babble_tracks=babble,
        sr=DEFAULT_SR,
        progress=lambda m: log("  " + m),
    )
    out = [
        EvalQuery(
            q.query_id,
            q.track_id,
            q.condition,
            q.length_s,
            q.offset_s,
            q.speed,
            q.loop_period_s,
            q.negative,
            resample_poly(q.audio, 1, DEFAULT_SR // SR).astype(np.float32),
        )
        for q in qs
    ]
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = [
        {f: getattr(q, f) for f in EvalQuery.__dataclass_fields__ if f != "audio"} for q in out
    ]
    bounds = np.cumsum([0] + [q.audio.size for q in out])
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        manifest=np.array(json.dumps(manifest)),
        audio=np.concatenate([q.audio for q in out]) if out else np.zeros(0, np.float32),
        bounds=bounds,
    )
    tmp.replace(path)
    log(f"queries: built {len(out)} in {time.monotonic() - t0:.0f} s, cached in {path}")
    return out


@dataclass
class CatalogIndex:
    track_ids: list[str]
    index: ExactIndex
    audio_s: float
    embed_cpu_s: float  # CPU time of embedding the catalog (frontend + model)

    @property
    def segments(self) -> int:
        return int(self.index.vectors.shape[0])


def build_index(
    embedder: NeuralEmbedder,
    tracks: Sequence[CorpusTrack],
    hop_s: float,
    cache_dir: Path,
    log: Callable[[str], None] = print,
) -> CatalogIndex:
    model_digest = hashlib.sha256(embedder.path.read_bytes()).hexdigest()[:16]
    key = _key([model_digest, [t.track_id for t in tracks], hop_s])
    path = cache_dir / f"index-{key}.npz"
    if path.exists():
        with np.load(path) as z:
            idx = ExactIndex(z["vectors"], z["keys"], z["times"])
            meta = json.loads(str(z["meta"]))
        return CatalogIndex(meta["track_ids"], idx, meta["audio_s"], meta["embed_cpu_s"])
    vecs, keys, times = [], [], []
    audio_s = cpu_s = 0.0
    for key_int, t in enumerate(tracks):
        x = decode_audio(t.path, SR)
        c0 = time.process_time()
        emb = embedder.embed(x, hop_s)
        cpu_s += time.process_time() - c0
        audio_s += x.size / SR
        vecs.append(emb.vectors)
        keys.append(np.full(emb.times_s.size, key_int, dtype=np.int64))
        times.append(emb.times_s)
    idx = ExactIndex(np.concatenate(vecs), np.concatenate(keys), np.concatenate(times))
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta = {"track_ids": [t.track_id for t in tracks], "audio_s": audio_s, "embed_cpu_s": cpu_s}
    np.savez(path, vectors=idx.vectors, keys=idx.track_keys, times=idx.times_s,
             meta=np.array(json.dumps(meta)))  # fmt: skip
    log(
        f"index: {len(tracks)} tracks, {audio_s / 3600:.2f} h, {idx.vectors.shape[0]} segments, "
        f"embedded at {audio_s / cpu_s:.0f}x real time (CPU time)"
    )
    return CatalogIndex(meta["track_ids"], idx, audio_s, cpu_s)


@dataclass(frozen=True)
class Scored:
    """A query's best candidate before the decision, for calibration and tables."""

    query: EvalQuery
    track_id: str | None
    offset_s: float
    score: float
    margin: float
    segments: int
    frequency_scale: float = 1.0


def score_queries(
    embedder: NeuralEmbedder,
    catalog: CatalogIndex,
    queries: Sequence[EvalQuery],
    *,
    k: int,
    catalog_hop_s: float,
    query_hop: float | None = None,
    freq_scales: Sequence[float] = (1.0,),
    log: Callable[[str], None] | None = None,
) -> list[Scored]:
    """Each query's best candidate over its views (the clip embedded at each of
    ``freq_scales``), with the margin to the best other track. ``query_hop``:
    one hop for every query and view; by default each gets the service's
    (``neural.query_hop_s``, fewer segments for a pitch view)."""
    out: list[Scored] = []
    started = time.monotonic()
    for n, q in enumerate(queries, 1):
        if log is not None and n % 1000 == 0:
            log(f"  scored {n}/{len(queries)} ({len(freq_scales)} views) in "
                f"{time.monotonic() - started:.0f} s")  # fmt: skip
        views = []
        for scale in freq_scales:
            cap = max_query_segments(scale)
            hop_s = query_hop if query_hop is not None else query_hop_s(q.audio.size, cap)
            emb = embedder.embed(q.audio, hop_s, scale)
            views.append(QueryView(scale, emb.times_s, emb.vectors))
        cands, floor = score_views(views, catalog.index.search, k=k, catalog_hop_s=catalog_hop_s)
        segments = views[0].times_s.size
        if not cands:
            out.append(Scored(q, None, 0.0, floor, 0.0, segments))
            continue
        best = cands[0]
        runner = cands[1].score if len(cands) > 1 else floor
        out.append(
            Scored(
                q,
                catalog.track_ids[best.track_key],
                best.offset_s,
                best.score,
                best.score - runner,
                best.segments,
                best.frequency_scale,
            )
        )
    return out


def accepted(s: Scored, calibration: Calibration) -> tuple[bool, float]:
    conf = float(calibration.confidence(s.score, s.margin, s.segments))
    return s.track_id is not None and conf >= calibration.min_confidence, conf


def two_stage(
    plain: Sequence[Scored],
    pitched: Sequence[Scored],
    calibration: Calibration = DEFAULT_CALIBRATION,
    pitched_calibration: Calibration = PITCHED_CALIBRATION,
) -> list[tuple[Scored, Calibration]]:
    """The search service's decision: the clip as it is first; only if that is
    not confident, the best over the pitch views, under their own calibration."""
    out = []
    for p, v in zip(plain, pitched, strict=True):
        if p.query.query_id != v.query.query_id:
            raise ValueError("plain and pitched scores are of different queries")
        ok, _ = accepted(p, calibration)
        out.append((p, calibration) if ok else (v, pitched_calibration))
    return out


def to_records(
    scored: Sequence[Scored] | Sequence[tuple[Scored, Calibration]],
    calibration: Calibration = DEFAULT_CALIBRATION,
) -> list[QueryRecord]:
    """bench.report records, with the calibrated decision applied (no match = None);
    items may carry their own calibration (``two_stage``)."""
    recs = []
    for item in scored:
        s, cal = item if isinstance(item, tuple) else (item, calibration)
        q = s.query
        ok, conf = accepted(s, cal)
        recs.append(
            QueryRecord.answered(
                q,
                predicted_track=s.track_id if ok else None,
                predicted_offset_s=s.offset_s if ok else None,
                confidence=conf if ok else None,
                score=s.score,
            )
        )
    return recs
