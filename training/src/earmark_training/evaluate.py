"""Evaluate the shipped neural fingerprint on the landmark benchmark's queries.

Usage::

    python -m earmark_training.evaluate --corpus ~/.cache/earmark/corpus [--milvus] [--out DIR]

Same split, conditions, lengths, excerpts (seed 0) and scoring rules as
`bench.run` (bench/report.py), but neural alone: the ONNX model through
`earmark_fingerprint.neural`, exact search over the catalog's segment vectors,
and `earmark_search.vector_matching` for the sequence score and the decision.
Positives are reported for all catalog tracks and separately for the tracks
the model never saw in training. ``--milvus`` also loads the catalog into
Milvus Lite with each index type and measures recall@k against exact search
and the size on disk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from bench import report
from bench.corpus import DEFAULT_CORPUS_DIR, decode_audio
from bench.degrade import DEFAULT_LENGTHS
from earmark_fingerprint.neural import (
    CATALOG_HOP_S,
    MAX_QUERY_SEGMENTS,
    MAX_VIEW_SEGMENTS,
    PITCH_VIEW_SEMITONES,
    QUERY_HOP_S,
    Embeddings,
    NeuralEmbedder,
    model_path,
    pitch_view_scales,
    query_hop_s,
)
from earmark_search.vector_matching import (
    DEFAULT_CALIBRATION,
    DEFAULT_K,
    PITCHED_CALIBRATION,
    Calibration,
)
from earmark_training.data import corpus_split
from earmark_training.evalset import (
    CatalogIndex,
    Scored,
    build_index,
    query_set,
    score_queries,
    to_records,
    two_stage,
)

REPO = Path(__file__).resolve().parents[3]
BENCHMARKS = REPO / "docs" / "benchmarks.md"
SPEED_AUDIO_S = 600.0


def landmark_top1(path: Path = BENCHMARKS) -> dict[str, dict[str, float]]:
    """The newest landmark `bench.run` top-1 table: condition -> {length: %}."""
    if not path.exists():
        return {}
    text = path.read_text()
    start = text.find("#### Top-1 hit rate")
    if start < 0:
        return {}
    lines = text[start:].splitlines()[2:]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    # Per-method tables head their columns "1 s L", "1 s N", ...: keep landmarks ("L").
    columns = {
        i: h.removesuffix(" L")
        for i, h in enumerate(header)
        if i > 0 and (h.endswith(" L") or h.endswith(" s"))
    }
    table: dict[str, dict[str, float]] = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0]] = {h: float(cells[i]) for i, h in columns.items() if i < len(cells)}
    return table


def comparison_table(records: Sequence[report.QueryRecord], lengths: Sequence[float]) -> str:
    landmark = landmark_top1()
    summary = report.summarize(records)
    conds = [c for c in summary.conditions]
    rows = []
    for c in conds:
        row = [c]
        for x in lengths:
            n = summary.pos([c], x)
            lm = landmark.get(c, {}).get(f"{x:g} s")
            mark = "" if lm is None else (" ✓" if n.hit_rate * 100 > lm else " ✗")
            row.append(
                f"{report.pct(n.hit_rate)} vs {lm:.1f}{mark}"
                if lm is not None
                else report.pct(n.hit_rate)
            )
        rows.append(row)
    return report.markdown_table(["condition", *(f"{x:g} s" for x in lengths)], rows)


def embedding_speed(embedder: NeuralEmbedder, catalog: CatalogIndex, tracks: Sequence) -> float:  # type: ignore[type-arg]
    """x real time of embed() at the catalog hop, one thread, CPU time, on catalog audio."""
    audio_s = cpu_s = 0.0
    for t in tracks:
        if audio_s >= SPEED_AUDIO_S:
            break
        x = decode_audio(t.path, 8000)[: int(SPEED_AUDIO_S * 8000)]
        embedder.embed(x[:16000])
        c0 = time.process_time()
        embedder.embed(x, CATALOG_HOP_S)
        cpu_s += time.process_time() - c0
        audio_s += x.size / 8000
    return audio_s / cpu_s


def milvus_report(
    catalog: CatalogIndex, sample_queries: np.ndarray, k: int, dim: int
) -> list[list[str]]:
    from earmark_search.vectors import LITE_INDEX, IndexChoice, SegmentStore

    choices = [
        IndexChoice("FLAT"),
        LITE_INDEX,
        IndexChoice("IVF_FLAT", {"nlist": 256}, {"nprobe": 8}),
        IndexChoice("HNSW", {"M": 16, "efConstruction": 200}, {"ef": 128}),
        IndexChoice("IVF_SQ8", {"nlist": 256}, {"nprobe": 32}),
    ]
    exact_idx, _ = catalog.index.top_k(sample_queries, k)
    exact_rows = [set(r.tolist()) for r in exact_idx]
    hours = catalog.audio_s / 3600
    rows = []
    for choice in choices:
        tmp = Path(tempfile.mkdtemp(prefix="earmark-milvus-"))
        store = SegmentStore(str(tmp / "segments.db"), dim=dim, index=choice)
        try:
            keys = catalog.index.track_keys
            for key in np.unique(keys):
                sel = keys == key
                store.write_track(int(key), catalog.index.times_s[sel], catalog.index.vectors[sel])
            # Seal the segments so searches go through the built index, not brute force.
            store.flush()
            t0 = time.perf_counter()
            hits = store.search(sample_queries, k)
            search_ms = 1000 * (time.perf_counter() - t0)
            # Map (track, time) back to row indices of the exact index.
            row_of = {
                (int(kk), round(float(tt), 3)): i
                for i, (kk, tt) in enumerate(
                    zip(catalog.index.track_keys, catalog.index.times_s, strict=True)
                )
            }
            recall = np.mean(
                [
                    len({row_of[(h[0], round(h[1], 3))] for h in hs} & ex) / len(ex)
                    for hs, ex in zip(hits, exact_rows, strict=True)
                ]
            )
            store.close()
            size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
            rows.append(
                [
                    choice.index_type,
                    json.dumps(choice.build_params) + " " + json.dumps(choice.search_params),
                    f"{recall * 100:.2f}",
                    f"{search_ms:.0f}",
                    f"{size / 1e6 / hours:.1f}",
                ]
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def embed_query(embedder: NeuralEmbedder, audio: np.ndarray, hop_s: float | None) -> Embeddings:
    return embedder.embed(audio, hop_s or query_hop_s(audio.size))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m earmark_training.evaluate", description=__doc__)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS_DIR)
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: shipped)")
    ap.add_argument("--k", type=int, default=DEFAULT_K)
    ap.add_argument("--catalog-hop", type=float, default=CATALOG_HOP_S)
    ap.add_argument(
        "--query-hop",
        type=float,
        default=None,
        help="one query hop for every clip (default: the service's, neural.query_hop_s)",
    )
    ap.add_argument(
        "--lengths", type=lambda s: [float(x) for x in s.split(",")], default=list(DEFAULT_LENGTHS)
    )
    ap.add_argument("--conditions", type=lambda s: s.split(","), default=None)
    ap.add_argument(
        "--pitch-views",
        type=lambda s: [float(x) for x in s.split(",") if x],
        default=list(PITCH_VIEW_SEMITONES),
        help="semitones: a clip not confidently matched as it is is searched again read at "
        "each of these pitch offsets, as the service does ('' for none)",
    )
    ap.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="JSON written by earmark_training.calibrate --out (default: the shipped constants)",
    )
    ap.add_argument("--milvus", action="store_true", help="measure Milvus Lite index recall/size")
    ap.add_argument("--cache", type=Path, default=Path("/work/runs/cache"))
    ap.add_argument("--out", type=Path, default=Path("/work/runs/eval"))
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    split = corpus_split(args.corpus)
    catalog_tracks = sorted(split.train + split.unseen_catalog, key=lambda t: t.track_id)
    seen = {t.track_id for t in split.train}
    embedder = NeuralEmbedder(args.model or model_path(), threads=1)
    log(f"model {embedder.path.name}: {embedder.meta.get('parameters')} parameters")
    catalog = build_index(embedder, catalog_tracks, args.catalog_hop, args.cache, log)
    # The whole benchmark set is built (and cached) once; options pick from it.
    queries = [
        q
        for q in query_set(
            "eval",
            catalog_tracks,
            split.held_out,
            split.held_out,
            seed=0,
            lengths=DEFAULT_LENGTHS,
            conditions=None,
            cache_dir=args.cache,
            log=log,
        )
        if q.length_s in args.lengths
        and (args.conditions is None or q.condition in args.conditions)
    ]
    t0 = time.monotonic()
    score = partial(
        score_queries,
        embedder,
        catalog,
        queries,
        k=args.k,
        catalog_hop_s=args.catalog_hop,
        query_hop=args.query_hop,
        log=log,
    )
    scored = score()
    calibration, pitched_calibration = DEFAULT_CALIBRATION, PITCHED_CALIBRATION
    if args.calibration:
        fitted = json.loads(args.calibration.read_text())
        calibration = Calibration(**fitted["calibration"])
        pitched_calibration = Calibration(
            **fitted.get("pitched_calibration", fitted["calibration"])
        )
    decisions: list[tuple[Scored, Calibration]] = [(s, calibration) for s in scored]
    best = scored
    if args.pitch_views:
        best = score(freq_scales=[1.0, *pitch_view_scales(args.pitch_views)])
        decisions = two_stage(scored, best, calibration, pitched_calibration)
    log(f"scored {len(scored)} queries in {time.monotonic() - t0:.0f} s")
    records = to_records(decisions)
    raw = to_records(best, replace(calibration, min_confidence=0.0))
    speed = embedding_speed(embedder, catalog, catalog_tracks)
    hours = catalog.audio_s / 3600
    raw_bytes = catalog.segments * (embedder.dim * 4 + 8 + 8 + 4)

    summary = report.summarize(records)
    neg = summary.neg_total()
    unseen_records = [r for r in records if r.negative or r.track_id not in seen]
    seen_records = [r for r in records if not r.negative and r.track_id in seen]
    query_hop_text = (
        f"{args.query_hop:g} s"
        if args.query_hop
        else f"{QUERY_HOP_S:g} s up to {MAX_QUERY_SEGMENTS} segments "
        f"({MAX_VIEW_SEGMENTS} for a pitch view), then wider"
    )
    out = [
        f"- command: `python -m earmark_training.evaluate {' '.join(argv)}`",
        f"- model: `{embedder.path.name}` ({embedder.meta.get('parameters')} parameters, "
        f"dim {embedder.dim}); k={args.k}, catalog hop {args.catalog_hop:g} s, "
        f"query hop {query_hop_text}; pitch views {args.pitch_views} st; exact search; "
        f"{calibration}; pitch views: {pitched_calibration}",
        f"- catalog: {len(catalog_tracks)} tracks, {hours:.2f} h, {catalog.segments} segments "
        f"({len(seen)} tracks seen in training, {len(catalog_tracks) - len(seen)} unseen); "
        f"held out (negatives): {len(split.held_out)} tracks",
        f"- queries: {len(records)} ({sum(not r.negative for r in records)} positive, "
        f"{sum(r.negative for r in records)} negative)",
        f"- false positives on held-out clips: {report.pct(neg.fp_rate, 2)} "
        f"({neg.false_positives}/{neg.n})",
        f"- embedding speed, one thread (CPU time, frontend + ONNX): {speed:.0f}x real time "
        f"at a {args.catalog_hop:g} s hop ({speed / args.catalog_hop:.0f} segments/s)",
        f"- index payload: {raw_bytes / 1e6 / hours:.2f} MB per hour of audio "
        f"(vector {embedder.dim * 4} B + pk, track key, time)",
        "",
        "#### Neural vs landmark top-1, % (neural first; ✓ = neural higher)",
        "",
        comparison_table(records, args.lengths),
        "",
        "#### Top-1 hit rate, %, all catalog tracks (accepted and right track)",
        "",
        report.hit_table(summary),
        "",
        "#### Top-1 hit rate, %, tracks never seen in training",
        "",
        report.hit_table(report.summarize(unseen_records)),
        "",
        "#### Top-1 hit rate, %, tracks seen in training",
        "",
        report.hit_table(report.summarize(seen_records)),
        "",
        "#### Offset accuracy, % (right track and offset within 0.5 s)",
        "",
        report.offset_table(summary),
        "",
        "#### Best candidate is the right track, % (over all views, before the no-match decision)",
        "",
        report.hit_table(report.summarize(raw)),
        "",
        *report.misses_and_false_positives(summary),
    ]
    if args.milvus:
        rng = np.random.default_rng(0)
        pick = rng.choice(len(queries), size=min(400, len(queries)), replace=False)
        sample = np.concatenate(
            [embed_query(embedder, queries[i].audio, args.query_hop).vectors for i in pick]
        )
        rows = milvus_report(catalog, sample, args.k, embedder.dim)
        out += [
            "",
            f"#### Milvus Lite index vs exact search ({sample.shape[0]} query segments, "
            f"recall@{args.k})",
            "",
            report.markdown_table(
                ["index", "build / search params", "recall %", "search ms (all)", "MB/h on disk"],
                rows,
            ),
        ]
    text = "\n".join(out)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(text + "\n")
    with (args.out / "records.jsonl").open("w") as f:
        f.writelines(json.dumps(r.to_json()) + "\n" for r in records)
    log(f"wrote {args.out}/report.md and records.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
