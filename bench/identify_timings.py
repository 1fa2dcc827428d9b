"""Where a running stack's Identify spends its time, stage by stage, by path.

Every IdentifyResponse carries the search service's own timings (extraction,
lookup, vote, peak verification, the speed/pitch rescue's extraction, lookup
and vote, and the neural search's stages). This asks a running stack to
identify the benchmark's queries of a few conditions and one length with one
method (`--method`, landmarks by default), one call at a time, and prints
p50/p90/p99 of each stage per path: clips answered as they are, and those that
went through the landmark rescue and/or the neural pitch views. The catalog is
the stack's: run it against the one `bench.run --keep --home DIR` leaves, e.g.

    python -m bench.run --methods landmarks --keep --home /tmp/bench-home \\
        --limit 4 --lengths 5 --conditions clean --no-split --no-docs
    python -m bench.identify_timings --home /tmp/bench-home --repeat 3
    python -m bench.identify_timings --home /tmp/bench-home --method fused --length 10
    python -m bench.identify_timings --home /tmp/bench-home --format mp3

The query set is `bench.run`'s (same split and seed), so the clips are catalog
tracks' excerpts and held-out ones.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.corpus import DEFAULT_CORPUS_DIR, list_corpus
from bench.degrade import BenchPlan
from bench.synthetic import CLIP_FORMATS, clip_bytes

STAGES = (
    ("total_ms", "total (search side)"),
    ("extract_ms", "fingerprint RPC"),
    ("lookup_ms", "lookup"),
    ("match_ms", "vote"),
    ("verify_ms", "peak verification"),
    ("rescue_ms", "rescue"),
    ("rescue_extract_ms", "  rescue: rescaled extraction RPC"),
    ("rescue_lookup_ms", "  rescue: lookup of every scale"),
    ("rescue_vote_ms", "  rescue: votes and verification"),
    ("neural_ms", "neural"),
    ("neural_search_ms", "  neural: search and score the clip's vectors"),
    ("neural_views_extract_ms", "  neural: embed the pitch views (RPC)"),
    ("neural_views_search_ms", "  neural: search and score the views"),
)
METHODS = ("landmarks", "neural", "fused")
DEFAULT_CONDITIONS = "clean,babble_5db,room,speed_+2pct,speed_-5pct,pitch_+1st"


def table(rows: list[dict[str, float]], title: str) -> str:
    lines = [
        f"{title}: {len(rows)} calls",
        "",
        "| stage | p50 ms | p90 ms | p99 ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, name in STAGES:
        values = np.array([r[key] for r in rows])
        if not values.size or not np.any(values):
            continue
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        lines.append(f"| {name} | {p50:.1f} | {p90:.1f} | {p99:.1f} |")
    return "\n".join(lines)


def path_title(rescued: bool, viewed: bool) -> str:
    if rescued and viewed:
        return "through the landmark rescue and the neural pitch views"
    if rescued:
        return "through the landmark rescue"
    if viewed:
        return "through the neural pitch views"
    return "answered as they are"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, required=True, help="EARMARK_HOME of a running stack")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS_DIR)
    ap.add_argument("--conditions", default=DEFAULT_CONDITIONS)
    ap.add_argument("--length", type=float, default=5.0, help="clip length, seconds")
    ap.add_argument("--limit", type=int, default=20, help="catalog tracks queried")
    ap.add_argument("--repeat", type=int, default=1, help="passes over the queries")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", choices=METHODS, default="landmarks")
    ap.add_argument(
        "--format",
        choices=CLIP_FORMATS,
        default="wav",
        help="container the clips are uploaded in (all but wav are decoded by ffmpeg)",
    )
    args = ap.parse_args(argv)

    import grpc

    from earmark.v1 import common_pb2, search_pb2, search_pb2_grpc
    from earmark_stack.stack import read_info

    info = read_info(args.home)
    if info is None:
        print(f"no running stack under {args.home}", file=sys.stderr)
        return 1
    plan = BenchPlan.of(list_corpus(args.corpus), args.seed, args.limit, args.conditions.split(","))
    queries = plan.queries([args.length], 1, args.seed)
    clips = [clip_bytes(q.audio, q.sr, args.format) for q in queries]
    method = getattr(search_pb2, f"IDENTIFY_METHOD_{args.method.upper()}")
    # A clip's path: whether the landmark rescue ran, whether the neural pitch views did.
    by_path: dict[tuple[bool, bool], list[dict[str, float]]] = {}
    with grpc.insecure_channel(info.addr("search")) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        for _ in range(args.repeat):
            for clip in clips:
                reply = stub.Identify(
                    search_pb2.IdentifyRequest(
                        audio=common_pb2.AudioInput(encoded=clip),
                        method=method,
                    ),
                    timeout=60,
                )
                t = reply.timings
                row = {key: float(getattr(t, key)) for key, _ in STAGES}
                path = (t.rescue_ms > 0, t.neural_views_extract_ms > 0)
                by_path.setdefault(path, []).append(row)
    print(
        f"{len(clips)} clips of {args.length:g} s ({args.conditions}), "
        f"{args.repeat} pass(es), {args.method} method, uploaded as {args.format}\n"
    )
    for path in sorted(by_path):
        print(table(by_path[path], path_title(*path)))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
