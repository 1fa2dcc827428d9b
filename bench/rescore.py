"""Redraw the accuracy part of a bench.run report from records.jsonl files.

Several files may be given: their records are joined by (query, method), a later
file's record replacing an earlier one's, so methods measured in two runs over
the same query set (same corpus, seed and options) can be compared cell by
cell, e.g. a fused run after a fusion change against the landmark and neural
records of a full run. Prints the issue-4 targets, the issue-3 accuracy and
false-positive targets (landmarks method, else auto), and the per-method
top-1 and false-positive tables. Latency, index size and extraction speed are
not in the records; see the runs' own reports.

    python -m bench.rescore RUN1/records.jsonl RUN2/records.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from bench import report


def load(paths: Sequence[Path]) -> list[report.QueryRecord]:
    joined: dict[tuple[str, str], report.QueryRecord] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            rec = report.QueryRecord.from_json(json.loads(line))
            joined[(rec.query_id, rec.method)] = rec
    return list(joined.values())


def render(records: Sequence[report.QueryRecord]) -> str:
    summaries = report.summarize_methods(records)
    methods = list(summaries)
    out = [
        f"methods: {', '.join(methods)} ({report.method_legend(methods)})",
        "",
        "#### Targets (issue 4), the methods on the same queries",
        "",
        report.targets_table(report.method_target_rows(summaries)),
        "",
    ]
    issue3 = report.issue3_method(methods)
    if issue3 is not None:
        rows = [
            row
            for row in report.target_rows(summaries[issue3])
            if row.measured not in ("not measured", "not measured by bench.run")
        ]
        out += [f"#### Targets (issue 3), {issue3} method (accuracy only)", ""]
        out += [report.targets_table(rows), ""]
    out += [
        "#### Top-1 hit rate, % (right track), per method",
        "",
        report.method_hit_table(summaries),
        "",
        "#### False positives on held-out (out-of-catalog) clips, per method",
        "",
        report.method_negatives_table(summaries),
    ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rescore", description=__doc__)
    ap.add_argument("records", type=Path, nargs="+")
    args = ap.parse_args(argv)
    print(render(load(args.records)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
