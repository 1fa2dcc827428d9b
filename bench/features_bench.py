"""Benchmark of the features service: descriptor accuracy, recommendations, speed.

    python -m bench.features_bench [--corpus DIR] [--quick]

1. BPM on generated drum loops with known tempo (within 2 %, or the octave
   error flagged by Rhythm.octave_ambiguous with the right bpm_alternative).
2. Key on generated chord progressions in every major and minor key.
3. "More like this" on the Debian corpus: precision@5 with "same Debian
   package" as relevance, for the service's similarity vector searched in
   Milvus Lite, against MFCC-mean cosine and a random ranking.
4. Extraction speed (x real time, one core) and the p50 of a Similar search
   (Milvus ANN + explanation) over the corpus index.

Descriptors of corpus tracks are cached under ~/.cache/earmark/features-bench
keyed by extractor version, so re-runs skip the extraction.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.corpus import DEFAULT_CORPUS_DIR, decode_audio, list_corpus
from earmark.v1 import features_pb2
from earmark_features import descriptors, similarity, testsignals
from earmark_features.index import SimilarityIndex

CACHE = Path.home() / ".cache" / "earmark" / "features-bench"


@dataclass
class Row:
    name: str
    value: str
    target: str
    met: str


def bench_bpm(n: int, seconds: float) -> tuple[float, float, float, float]:
    rng = np.random.default_rng(20240601)
    strict = flagged_ok = flagged = 0
    speeds = []
    for i in range(n):
        bpm = float(rng.uniform(60, 190))
        swing = 0.15 if i % 3 == 2 else 0.0
        x = testsignals.drum_loop(bpm, seconds, seed=1000 + i, swing=swing)
        started = time.process_time()
        f = descriptors.describe(x)
        speeds.append(seconds / max(time.process_time() - started, 1e-9))
        ok = abs(f.rhythm.bpm - bpm) / bpm <= 0.02
        alt_ok = f.rhythm.octave_ambiguous and abs(f.rhythm.bpm_alternative - bpm) / bpm <= 0.02
        strict += ok
        flagged_ok += ok or alt_ok
        flagged += f.rhythm.octave_ambiguous
        if not (ok or alt_ok):
            print(
                f"  bpm miss: true {bpm:.1f} got {f.rhythm.bpm:.1f} "
                f"(alt {f.rhythm.bpm_alternative:.1f}, swing {swing})",
                file=sys.stderr,
            )
    return strict / n, flagged_ok / n, flagged / n, float(np.median(speeds))


def bench_key(seconds: float) -> tuple[float, float]:
    right = relative = total = 0
    for i, tonic in enumerate(descriptors.NOTE_NAMES):
        for scale in ("major", "minor"):
            for variant in (0, 1):
                x = testsignals.chord_progression(tonic, scale, seconds, seed=500 + 2 * i + variant)
                f = descriptors.describe(x)
                total += 1
                if f.tonality.key == tonic and f.tonality.scale == scale:
                    right += 1
                else:
                    rel_pc = (
                        descriptors.NOTE_NAMES.index(tonic) + (9 if scale == "major" else 3)
                    ) % 12
                    relative += f.tonality.key == descriptors.NOTE_NAMES[rel_pc]
                    print(
                        f"  key miss: {tonic} {scale} -> {f.tonality.key} {f.tonality.scale}",
                        file=sys.stderr,
                    )
    return right / total, relative / total


def corpus_features(
    corpus: Path, limit: int | None
) -> tuple[list[str], list[str], list[features_pb2.TrackFeatures], float, float]:
    """(track ids, packages, descriptors, x real time of describe, x real time with decode)."""
    tracks = list_corpus(corpus)
    if limit:
        tracks = tracks[:limit]
    cache = CACHE / descriptors.EXTRACTOR_VERSION.replace("/", "_")
    cache.mkdir(parents=True, exist_ok=True)
    ids, packages, feats = [], [], []
    audio_s = cpu_s = decode_s = 0.0
    for n, t in enumerate(tracks, start=1):
        path = cache / (t.track_id.replace("/", "__") + ".pb")
        if path.exists():
            f = features_pb2.TrackFeatures.FromString(path.read_bytes())
        else:
            started = time.process_time()
            wall = time.perf_counter()
            x = decode_audio(t.path, sr=descriptors.SAMPLE_RATE_HZ)
            decode_s += time.perf_counter() - wall
            started = time.process_time()
            f = descriptors.describe(x, t.track_id)
            cpu_s += time.process_time() - started
            audio_s += min(f.duration_s, descriptors.MAX_ANALYSED_S)
            path.write_bytes(f.SerializeToString())
            print(f"  described {n}/{len(tracks)} {t.track_id}", file=sys.stderr)
        ids.append(t.track_id)
        packages.append(t.package)
        feats.append(f)
    speed = audio_s / cpu_s if cpu_s else float("nan")
    speed_decode = audio_s / (cpu_s + decode_s) if cpu_s else float("nan")
    return ids, packages, feats, speed, speed_decode


def precision_at(k: int, order: np.ndarray, labels: np.ndarray) -> float:
    """Mean over queries of the share of the k first (self excluded) with the query's label."""
    hits = []
    for q in range(len(labels)):
        ranked = [j for j in order[q] if j != q][:k]
        hits.append(np.mean(labels[ranked] == labels[q]))
    return float(np.mean(hits))


def bench_similarity(
    ids: list[str], packages: list[str], feats: list[features_pb2.TrackFeatures], k: int = 5
) -> dict[str, float]:
    labels = np.array(packages)
    n = len(ids)
    out: dict[str, float] = {}
    # Random ranking: expected precision is the share of same-package tracks among the others.
    same = np.array([(labels == labels[q]).sum() - 1 for q in range(n)])
    out["random"] = float(np.mean(same / (n - 1)))
    # Upper bound: a perfect ranking is capped by packages smaller than k + 1.
    out["ceiling"] = float(np.mean(np.minimum(same, k) / k))
    mfcc = np.array([list(f.spectral.mfcc_mean) for f in feats], dtype=np.float64)
    mfcc /= np.linalg.norm(mfcc, axis=1, keepdims=True)
    out["mfcc_mean_cosine"] = precision_at(k, np.argsort(-(mfcc @ mfcc.T), axis=1), labels)
    # The service's vector, searched through Milvus Lite exactly as the service does.
    with tempfile.TemporaryDirectory() as tmp:
        index = SimilarityIndex(str(Path(tmp) / "milvus.db"))
        try:
            index.upsert_many(
                [(f"{i:08x}-0000-0000-0000-000000000000", f) for i, f in enumerate(feats)]
            )
            order = []
            for f in feats:
                results = index.search(similarity.vector(f), k + 1)
                order.append([int(r.track_id[:8], 16) for r in results])
            out["earmark_vector_milvus"] = precision_at(k, np.array(order), labels)
            # Similar as served: look the track's vector up, search, explain.
            latencies = []
            for q in range(n):
                started = time.perf_counter()
                index.similar(f"{q:08x}-0000-0000-0000-000000000000", 10)
                latencies.append(time.perf_counter() - started)
            out["similar_p50_ms"] = float(np.median(latencies) * 1000)
            out["similar_p95_ms"] = float(np.percentile(latencies, 95) * 1000)
        finally:
            index.close()
    return out


COLUMNS = ("measure", "value", "target", "met")


def _met(ok: bool) -> str:
    return "yes" if ok else "no"


def print_table(rows: list[Row]) -> None:
    cells = [COLUMNS] + [(r.name, r.value, r.target, r.met) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    for n, cell in enumerate(cells):
        print("| " + " | ".join(v.ljust(w) for v, w in zip(cell, widths, strict=True)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS_DIR)
    parser.add_argument("--quick", action="store_true", help="fewer tracks: a smoke run")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    n_bpm, seconds = (12, 20.0) if args.quick else (60, 30.0)
    print(
        f"extractor {descriptors.EXTRACTOR_VERSION}; similarity {similarity.SIMILARITY_VERSION}",
        file=sys.stderr,
    )
    rows: list[Row] = []
    strict, with_flag, flag_rate, synth_speed = bench_bpm(n_bpm, seconds)
    rows += [
        Row(f"BPM within 2 % ({n_bpm} drum loops, 60-190 BPM)", f"{strict:.1%}", "", ""),
        Row(
            "BPM within 2 % or octave error flagged",
            f"{with_flag:.1%}",
            ">= 95 %",
            _met(with_flag >= 0.95),
        ),
        Row("  tracks flagged octave-ambiguous", f"{flag_rate:.1%}", "", ""),
    ]
    key_right, key_relative = bench_key(seconds)
    rows += [
        Row(
            "key and scale right (48 progressions, 24 keys)",
            f"{key_right:.1%}",
            ">= 90 %",
            _met(key_right >= 0.9),
        ),
        Row("  relative major/minor confusions", f"{key_relative:.1%}", "", ""),
    ]
    if args.corpus.is_dir():
        ids, packages, feats, speed, speed_decode = corpus_features(
            args.corpus, 10 if args.quick else None
        )
        sim = bench_similarity(ids, packages, feats)
        p5 = sim["earmark_vector_milvus"]
        rows += [
            Row(
                f"precision@5, Earmark vector in Milvus ({len(ids)} tracks)",
                f"{p5:.3f}",
                ">= 0.8",
                _met(p5 >= 0.8),
            ),
            Row("precision@5, MFCC-mean cosine", f"{sim['mfcc_mean_cosine']:.3f}", "baseline", ""),
            Row("precision@5, random ranking (expected)", f"{sim['random']:.3f}", "baseline", ""),
            Row("precision@5, perfect ranking (ceiling)", f"{sim['ceiling']:.3f}", "", ""),
        ]
        if speed == speed:  # not NaN: something was extracted in this run, not cached
            rows += [
                Row(
                    "extraction, corpus, x real time per core",
                    f"{speed:.0f}x",
                    ">= 30x",
                    _met(speed >= 30),
                ),
                Row("  with ffmpeg decoding", f"{speed_decode:.0f}x", "", ""),
            ]
        rows.append(
            Row(
                "Similar p50 / p95 (Milvus Lite, k=10)",
                f"{sim['similar_p50_ms']:.1f} / {sim['similar_p95_ms']:.1f} ms",
                "p50 <= 20 ms",
                _met(sim["similar_p50_ms"] <= 20),
            ),
        )
    else:
        print(
            f"no corpus at {args.corpus}: `make corpus` adds the recommendation rows",
            file=sys.stderr,
        )
    rows.append(
        Row(
            "extraction, generated 30 s loops, x real time per core",
            f"{synth_speed:.0f}x",
            ">= 30x",
            _met(synth_speed >= 30),
        ),
    )
    print_table(rows)


if __name__ == "__main__":
    main()
