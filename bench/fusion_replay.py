"""Replay fusion's confirmation rule on per-query records of both methods.

Reads bench.run records (JSON lines with `method` landmarks and neural, or two
files of one method each over the same queries) and prints, per threshold,
top-1 over all positives and false positives on out-of-catalog clips when a
landmark answer below the threshold needs the neural answer to name the same
track (fusion.UNCONFIRMED_MIN). Tracks only: offsets are not compared, so it
is an approximation of `fusion.fuse`, good for choosing the threshold.

    python -m bench.fusion_replay records.jsonl [more.jsonl] --thresholds 0,0.6,0.7,0.8

A later file's record of a (query, method) replaces an earlier one's, so the
landmark records of `earmark_training.landmark_decision --records` can stand in
for a run's landmark column.
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


def short_cells(queries: Sequence[dict[str, Record]], answer: Any) -> list[str]:
    """Condition x length cells where the fused answer is right less often than
    the better of the two methods."""
    tally: dict[tuple[str, float], list[int]] = {}
    for q in queries:
        truth = q["landmarks"]
        if truth["negative"]:
            continue
        cell = tally.setdefault((truth["condition"], truth["length_s"]), [0, 0, 0])
        for i, given in enumerate(
            (q["landmarks"]["predicted_track"], q["neural"]["predicted_track"], answer(q))
        ):
            cell[i] += given == truth["track_id"]
    return [f"{c} {n:g} s" for (c, n), (lm, nn, fu) in sorted(tally.items()) if fu < max(lm, nn)]


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
    methods = args.methods.split(",")
    # Files past the named methods must carry their own `method` fields.
    defaults = (methods + [methods[-1]] * len(args.records))[: len(args.records)]
    by_query = load(args.records, defaults)
    queries = [q for q in by_query.values() if "landmarks" in q and "neural" in q]
    rows = []
    for name, answer in (
        ("landmarks alone", lambda q: q["landmarks"]["predicted_track"]),
        ("neural alone", lambda q: q["neural"]["predicted_track"]),
    ):
        top1, false, negatives = rates(queries, answer)
        rows.append([name, f"{top1:.2f}", f"{100 * false / max(negatives, 1):.2f} ({false})"])
    for threshold in (float(t) for t in args.thresholds.split(",")):

        def fused(q: dict[str, Record], t: float = threshold) -> str | None:
            return fused_answer(q["landmarks"], q["neural"], t)

        top1, false, negatives = rates(queries, fused)
        short = short_cells(queries, fused)
        rows.append(
            [
                f"landmark < {threshold:g} needs confirmation",
                f"{top1:.2f}",
                f"{100 * false / max(negatives, 1):.2f} ({false})",
                f"{len(short)}: {', '.join(short)}" if short else "0",
            ]
        )
    print(f"{len(queries)} queries with both methods")
    header = ["rule", "top-1 %", "false positives % (n)", "cells where fused < better method"]
    rows = [row + [""] * (len(header) - len(row)) for row in rows]
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
