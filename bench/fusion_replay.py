"""Replay fusion's confirmation rule on per-query records of both methods.

Reads bench.run records (JSON lines with `method` landmarks and neural, or two
files of one method each over the same queries) and prints, per threshold,
top-1 over all positives and false positives on out-of-catalog clips when a
landmark answer below the threshold needs the neural answer to name the same
track (fusion.UNCONFIRMED_MIN). Tracks only: offsets are not compared, so it
is an approximation of `fusion.fuse`, good for choosing the threshold.

    python -m bench.fusion_replay records.jsonl [more.jsonl] --thresholds 0,0.6,0.7,0.8
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.report import markdown_table

Record = dict[str, Any]


def load(paths: Sequence[Path], default_methods: Sequence[str]) -> dict[str, dict[str, Record]]:
    """query_id -> method -> record; a file without `method` fields takes its default."""
    by_query: dict[str, dict[str, Record]] = {}
    for path, default in zip(paths, default_methods, strict=True):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            by_query.setdefault(rec["query_id"], {})[rec.get("method") or default] = rec
    return by_query


def fused_answer(landmarks: Record, neural: Record, threshold: float) -> str | None:
    mine, theirs = landmarks["predicted_track"], neural["predicted_track"]
    if mine and (mine == theirs or (landmarks["confidence"] or 0.0) >= threshold):
        return str(mine)
    return str(theirs) if theirs else None


def rates(queries: Sequence[dict[str, Record]], answer: Any) -> tuple[float, int, int]:
    """(top-1 % over positives, false positives, negatives)."""
    hits = positives = false = negatives = 0
    for q in queries:
        truth, given = q["landmarks"], answer(q)
        if truth["negative"]:
            negatives += 1
            false += given is not None
        else:
            positives += 1
            hits += given == truth["track_id"]
    return 100.0 * hits / max(positives, 1), false, negatives


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fusion_replay", description=__doc__)
    ap.add_argument("records", type=Path, nargs="+")
    ap.add_argument(
        "--methods",
        default="landmarks,neural",
        help="method of each file whose records carry none (default landmarks,neural)",
    )
    ap.add_argument("--thresholds", default="0,0.5,0.6,0.7,0.8")
    args = ap.parse_args(argv)
    defaults = args.methods.split(",")[: len(args.records)]
    by_query = load(args.records, defaults)
    queries = [q for q in by_query.values() if "landmarks" in q and "neural" in q]
    rows = []
    for name, answer in (
        ("landmarks alone", lambda q: q["landmarks"]["predicted_track"]),
        ("neural alone", lambda q: q["neural"]["predicted_track"]),
    ):
        top1, false, negatives = rates(queries, answer)
        rows.append([name, f"{top1:.1f}", f"{100 * false / max(negatives, 1):.2f} ({false})"])
    for threshold in (float(t) for t in args.thresholds.split(",")):
        top1, false, negatives = rates(
            queries, lambda q, t=threshold: fused_answer(q["landmarks"], q["neural"], t)
        )
        rows.append(
            [
                f"landmark < {threshold:g} needs confirmation",
                f"{top1:.1f}",
                f"{100 * false / max(negatives, 1):.2f} ({false})",
            ]
        )
    print(f"{len(queries)} queries with both methods")
    print(markdown_table(["rule", "top-1 %", "false positives % (n)"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
