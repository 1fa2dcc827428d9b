"""Scoring and tables for the identification benchmark (`bench.run`).

Pure functions on plain records, so the scoring rules are unit-tested without
a stack (tests/unit/test_bench_report.py).

Scoring rules
-------------
* **Hit (top-1)**: a positive query whose best match is the track the excerpt
  was cut from.
* **Offset right**: a hit whose reported offset lies within ``OFFSET_TOL_S`` of
  the truth. The truth is where the query's first sample lies in the ORIGINAL
  track, ``offset_s`` in `bench.degrade`: query time t maps to original time
  ``offset_s + t * speed``, so at t = 0 it is ``offset_s`` for every condition.
  That is the speed correction: a clip played 5 % fast still starts at
  ``offset_s`` of the track, not at ``offset_s / 1.05``. For tracks that loop
  one piece (``loop_period_s``) any offset congruent to the truth modulo the
  period is right.
* **False positive**: a held-out (out-of-catalog) query that returned any
  match. A positive query answered with the wrong track is counted apart as
  "wrong track".

Methods
-------
`bench.run` can identify every query once per identify method (landmarks,
neural, fused, auto); each record carries its ``method``. The scoring above
applies to each method's records on their own (`by_method`), and the issue-4
targets compare methods cell by cell on the same queries (`method_target_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

OFFSET_TOL_S = 0.5

# Identify methods by the SDK's names (earmark.results.IDENTIFY_METHODS).
LANDMARKS = "landmarks"
NEURAL = "neural"
FUSED = "fused"
AUTO = "auto"


@dataclass(frozen=True)
class QueryRecord:
    """One identified query: the truth from `bench.degrade.Query` and the answer."""

    query_id: str
    condition: str
    length_s: float
    negative: bool
    # Corpus track the excerpt was cut from (bench.corpus track_id).
    track_id: str
    offset_s: float
    speed: float = 1.0
    loop_period_s: float | None = None
    # Top-1 answer, as a corpus track_id (the external_id it was ingested under).
    predicted_track: str | None = None
    predicted_offset_s: float | None = None
    confidence: float | None = None
    score: float | None = None
    # Client-side Identify round trip.
    latency_ms: float = 0.0
    # Server-side time reported by search, when the SDK exposes it.
    server_ms: float | None = None
    # An RPC error instead of an answer (counted as "no match").
    error: str | None = None
    # Identify method asked for. Records written before the field existed came
    # from the SDK's default, auto.
    method: str = AUTO
    # Which identifiers found the top match (Match.methods): landmarks, neural or both.
    match_methods: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> QueryRecord:
        fields = {k: row[k] for k in cls.__dataclass_fields__ if k in row}
        if "match_methods" in fields:  # a JSON list
            fields["match_methods"] = tuple(fields["match_methods"] or ())
        return cls(**fields)

    @classmethod
    def answered(cls, query: Any, **answer: Any) -> QueryRecord:
        """The truth of `query` (a bench.degrade.Query) with an identifier's answer."""
        return cls(
            query_id=query.query_id,
            condition=query.condition,
            length_s=query.length_s,
            negative=query.negative,
            track_id=query.track_id,
            offset_s=query.offset_s,
            speed=query.speed,
            loop_period_s=query.loop_period_s,
            **answer,
        )


def truth_offset_s(rec: QueryRecord, query_time_s: float = 0.0) -> float:
    """Original-track time of query time ``query_time_s`` (bench.degrade's mapping)."""
    return rec.offset_s + query_time_s * rec.speed


def offset_error_s(predicted: float, truth: float, loop_period_s: float | None = None) -> float:
    """|predicted - truth|, or the distance modulo the loop period for looping tracks."""
    diff = predicted - truth
    if loop_period_s:
        diff = math.fmod(diff, loop_period_s)
        if diff < 0:
            diff += loop_period_s
        return min(diff, loop_period_s - diff)
    return abs(diff)


def is_hit(rec: QueryRecord) -> bool:
    return not rec.negative and rec.predicted_track == rec.track_id


def is_offset_right(rec: QueryRecord, tol_s: float = OFFSET_TOL_S) -> bool:
    if not is_hit(rec) or rec.predicted_offset_s is None:
        return False
    return offset_error_s(rec.predicted_offset_s, truth_offset_s(rec), rec.loop_period_s) <= tol_s


def is_false_positive(rec: QueryRecord) -> bool:
    return rec.negative and rec.predicted_track is not None


def is_wrong_track(rec: QueryRecord) -> bool:
    return not rec.negative and rec.predicted_track not in (None, rec.track_id)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# ------------------------------------------------------------------- aggregates


@dataclass
class Cell:
    n: int = 0
    hits: int = 0
    offset_right: int = 0
    wrong_track: int = 0
    false_positives: int = 0
    errors: int = 0
    confidences: list[float] = field(default_factory=list)

    def add(self, rec: QueryRecord) -> None:
        self.n += 1
        self.hits += is_hit(rec)
        self.offset_right += is_offset_right(rec)
        self.wrong_track += is_wrong_track(rec)
        self.false_positives += is_false_positive(rec)
        self.errors += rec.error is not None
        if rec.predicted_track is not None and rec.confidence is not None:
            self.confidences.append(rec.confidence)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.n if self.n else math.nan

    @property
    def offset_rate(self) -> float:
        return self.offset_right / self.n if self.n else math.nan

    @property
    def fp_rate(self) -> float:
        return self.false_positives / self.n if self.n else math.nan


@dataclass
class Summary:
    conditions: list[str]
    lengths: list[float]
    positives: dict[tuple[str, float], Cell]
    negatives: dict[tuple[str, float], Cell]

    def pos(self, conditions: Iterable[str], length: float) -> Cell:
        """Pooled positives of several conditions at one length."""
        return _pool(
            cell for c in conditions if (cell := self.positives.get((c, length))) is not None
        )

    def neg_total(self, condition: str | None = None) -> Cell:
        return _pool(cell for (c, _), cell in self.negatives.items() if condition in (None, c))

    def pos_total(self) -> Cell:
        return _pool(self.positives.values())


def _pool(cells: Iterable[Cell]) -> Cell:
    out = Cell()
    for cell in cells:
        out.n += cell.n
        out.hits += cell.hits
        out.offset_right += cell.offset_right
        out.wrong_track += cell.wrong_track
        out.false_positives += cell.false_positives
        out.errors += cell.errors
        out.confidences += cell.confidences
    return out


def summarize(records: Iterable[QueryRecord]) -> Summary:
    conditions: list[str] = []
    lengths: set[float] = set()
    positives: dict[tuple[str, float], Cell] = {}
    negatives: dict[tuple[str, float], Cell] = {}
    for rec in records:
        if rec.condition not in conditions:
            conditions.append(rec.condition)
        lengths.add(rec.length_s)
        bucket = negatives if rec.negative else positives
        bucket.setdefault((rec.condition, rec.length_s), Cell()).add(rec)
    return Summary(conditions, sorted(lengths), positives, negatives)


# ----------------------------------------------------------------------- tables


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], *, left: int = 1
) -> str:
    """A GitHub markdown table; the first ``left`` columns left-aligned, the rest right."""
    body = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    sep = (
        "| "
        + " | ".join("-" * w if i < left else "-" * (w - 1) + ":" for i, w in enumerate(widths))
        + " |"
    )
    return "\n".join([line(list(headers)), sep, *(line(r) for r in body)])


def pct(x: float, digits: int = 1) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.{digits}f}"


def ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.1f}"


def _length_header(x: float) -> str:
    return f"{x:g} s"


def rate_table(summary: Summary, metric: Callable[[Cell], float]) -> str:
    """Condition x length grid of a positive-query rate, in percent."""
    headers = ["condition", *(_length_header(x) for x in summary.lengths), "all"]
    rows = []
    for c in summary.conditions:
        cells = [summary.positives.get((c, x)) for x in summary.lengths]
        if not any(cells):
            continue
        row: list[object] = [c]
        row += [pct(metric(cell)) if cell else "-" for cell in cells]
        row.append(pct(metric(_pool(cell for cell in cells if cell))))
        rows.append(row)
    allrow: list[object] = ["all conditions"]
    for x in summary.lengths:
        allrow.append(pct(metric(_pool(v for (_, ln), v in summary.positives.items() if ln == x))))
    allrow.append(pct(metric(_pool(summary.positives.values()))))
    rows.append(allrow)
    return markdown_table(headers, rows)


def hit_table(summary: Summary) -> str:
    return rate_table(summary, lambda c: c.hit_rate)


def offset_table(summary: Summary) -> str:
    return rate_table(summary, lambda c: c.offset_rate)


def negatives_table(summary: Summary) -> str:
    headers = ["condition", "queries", "false positives", "rate %", "max confidence"]
    rows: list[list[object]] = []
    for c in summary.conditions:
        cell = summary.neg_total(c)
        if not cell.n:
            continue
        rows.append([
            c, cell.n, cell.false_positives, pct(cell.fp_rate, 2),
            f"{max(cell.confidences):.2f}" if cell.confidences else "-",
        ])  # fmt: skip
    total = summary.neg_total()
    rows.append([
        "all", total.n, total.false_positives, pct(total.fp_rate, 2),
        f"{max(total.confidences):.2f}" if total.confidences else "-",
    ])  # fmt: skip
    return markdown_table(headers, rows)


def errors_table(summary: Summary) -> str:
    """Why positives failed, per condition: no answer vs a wrong track."""
    headers = ["condition", "queries", "no match %", "wrong track %", "median conf. (hits)"]
    rows: list[list[object]] = []
    for c in summary.conditions:
        cell = _pool(v for (cc, _), v in summary.positives.items() if cc == c)
        if not cell.n:
            continue
        no_match = cell.n - cell.hits - cell.wrong_track
        rows.append([
            c, cell.n, pct(no_match / cell.n), pct(cell.wrong_track / cell.n),
            f"{percentile(cell.confidences, 50):.2f}" if cell.confidences else "-",
        ])  # fmt: skip
    return markdown_table(headers, rows)


def misses_and_false_positives(summary: Summary) -> list[str]:
    """The misses and false-positive tables under their headings, as markdown lines."""
    return [
        "#### Misses of positive queries",
        "",
        errors_table(summary),
        "",
        "#### False positives on held-out (out-of-catalog) clips",
        "",
        negatives_table(summary),
    ]


def latency_table(records: Sequence[QueryRecord], *, server: bool = False) -> str:
    """Latency per clip length: client round trip, or with ``server`` search's own figure."""

    def value(r: QueryRecord) -> float | None:
        return (r.server_ms if server else r.latency_ms) if r.error is None else None

    headers = ["clip length", "queries", "p50 ms", "p90 ms", "p99 ms", "max ms"]
    rows: list[list[object]] = []
    for x in sorted({r.length_s for r in records}):
        lat = [v for r in records if r.length_s == x and (v := value(r)) is not None]
        rows.append([
            _length_header(x), len(lat), ms(percentile(lat, 50)), ms(percentile(lat, 90)),
            ms(percentile(lat, 99)), ms(max(lat) if lat else math.nan),
        ])  # fmt: skip
    lat = [v for r in records if (v := value(r)) is not None]
    rows.append([
        "all", len(lat), ms(percentile(lat, 50)), ms(percentile(lat, 90)),
        ms(percentile(lat, 99)), ms(max(lat) if lat else math.nan),
    ])  # fmt: skip
    return markdown_table(headers, rows)


OUT_OF_CATALOG = "out-of-catalog"


def condition_latency_table(
    records: Sequence[QueryRecord], length_s: float, *, server: bool = True
) -> str:
    """Latency of one clip length per condition, out-of-catalog clips in a row of
    their own: a p50 over the whole mix hides which clips take the slow path
    (speed and pitch changes, and clips that match nothing, are rescaled)."""

    def value(r: QueryRecord) -> float | None:
        return (r.server_ms if server else r.latency_ms) if r.error is None else None

    groups: dict[str, list[float]] = {}
    for r in records:
        if r.length_s == length_s and (v := value(r)) is not None:
            groups.setdefault(OUT_OF_CATALOG if r.negative else r.condition, []).append(v)
    headers = ["condition", "queries", "p50 ms", "p90 ms", "p99 ms"]
    rows: list[list[object]] = []
    names = sorted(k for k in groups if k != OUT_OF_CATALOG)
    names += [OUT_OF_CATALOG] if OUT_OF_CATALOG in groups else []
    everything = [v for k in names for v in groups[k]]
    for name, lat in [*((k, groups[k]) for k in names), ("all", everything)]:
        rows.append([
            name, len(lat), ms(percentile(lat, 50)), ms(percentile(lat, 90)),
            ms(percentile(lat, 99)),
        ])  # fmt: skip
    return markdown_table(headers, rows)


# ---------------------------------------------------------------------- methods


# Order of the methods in tables: the two identifiers, their fusion, then auto;
# any other name after these, alphabetically.
METHOD_ORDER = (LANDMARKS, NEURAL, FUSED, AUTO)


def _method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def by_method(records: Iterable[QueryRecord]) -> dict[str, list[QueryRecord]]:
    """Records grouped by identify method (in METHOD_ORDER), each group in record order."""
    out: dict[str, list[QueryRecord]] = {}
    for rec in records:
        out.setdefault(rec.method, []).append(rec)
    return {m: out[m] for m in sorted(out, key=_method_rank)}


def summarize_methods(records: Iterable[QueryRecord]) -> dict[str, Summary]:
    return {method: summarize(recs) for method, recs in by_method(records).items()}


# Column tags of the per-method tables; the report prints the legend.
METHOD_TAGS = {LANDMARKS: "L", NEURAL: "N", FUSED: "F", AUTO: "A"}


def method_tag(method: str) -> str:
    return METHOD_TAGS.get(method, method)


def method_legend(methods: Iterable[str]) -> str:
    return ", ".join(f"{method_tag(m)} = {m}" for m in methods)


def _union_axes(summaries: Mapping[str, Summary]) -> tuple[list[str], list[float]]:
    conditions: list[str] = []
    lengths: set[float] = set()
    for summary in summaries.values():
        conditions += [c for c in summary.conditions if c not in conditions]
        lengths.update(summary.lengths)
    return conditions, sorted(lengths)


def method_rate_table(summaries: Mapping[str, Summary], metric: Callable[[Cell], float]) -> str:
    """Condition x length grid with one column per method in every length, in percent."""
    conditions, lengths = _union_axes(summaries)
    methods = list(summaries)
    headers = ["condition"]
    headers += [f"{_length_header(x)} {method_tag(m)}" for x in lengths for m in methods]
    headers += [f"all {method_tag(m)}" for m in methods]

    def rate(m: str, cells: Iterable[Cell]) -> str:
        pooled = _pool(cells)
        return pct(metric(pooled)) if pooled.n else "-"

    rows: list[list[object]] = []
    for c in conditions:
        if not any((c, x) in s.positives for s in summaries.values() for x in lengths):
            continue
        row: list[object] = [c]
        for x in lengths:
            row += [rate(m, [summaries[m].pos([c], x)]) for m in methods]
        row += [rate(m, [_condition_cell(summaries[m], c)]) for m in methods]
        rows.append(row)
    allrow: list[object] = ["all conditions"]
    for x in lengths:
        allrow += [
            rate(m, (v for (_, ln), v in summaries[m].positives.items() if ln == x))
            for m in methods
        ]
    allrow += [rate(m, summaries[m].positives.values()) for m in methods]
    rows.append(allrow)
    return markdown_table(headers, rows)


def method_hit_table(summaries: Mapping[str, Summary]) -> str:
    return method_rate_table(summaries, lambda c: c.hit_rate)


def method_offset_table(summaries: Mapping[str, Summary]) -> str:
    return method_rate_table(summaries, lambda c: c.offset_rate)


def _condition_cell(summary: Summary, condition: str) -> Cell:
    """Positives of one condition, every length pooled."""
    return _pool(v for (c, _), v in summary.positives.items() if c == condition)


def _share(cell: Cell, count: int) -> str:
    return pct(count / cell.n) if cell.n else "-"


def method_errors_table(summaries: Mapping[str, Summary]) -> str:
    """Why positives failed, per condition and method: no answer vs a wrong track."""
    conditions, _ = _union_axes(summaries)
    methods = list(summaries)
    headers = ["condition", "queries"]
    headers += [f"no match % {method_tag(m)}" for m in methods]
    headers += [f"wrong track % {method_tag(m)}" for m in methods]
    rows: list[list[object]] = []
    for c in conditions:
        cells = {m: _condition_cell(s, c) for m, s in summaries.items()}
        n = max(cell.n for cell in cells.values())
        if not n:
            continue
        row: list[object] = [c, n]
        row += [_share(cell, cell.n - cell.hits - cell.wrong_track) for cell in cells.values()]
        row += [_share(cell, cell.wrong_track) for cell in cells.values()]
        rows.append(row)
    return markdown_table(headers, rows)


def method_negatives_table(summaries: Mapping[str, Summary]) -> str:
    """False positives per condition and method: count (rate %), then the top confidence."""
    conditions, _ = _union_axes(summaries)
    methods = list(summaries)
    headers = ["condition", "queries", *(f"false pos. {method_tag(m)}" for m in methods)]

    def fp(cell: Cell) -> str:
        return f"{cell.false_positives} ({pct(cell.fp_rate, 2)} %)" if cell.n else "-"

    rows: list[list[object]] = []
    for c in conditions:
        cells = [summaries[m].neg_total(c) for m in methods]
        n = max(cell.n for cell in cells)
        if n:
            rows.append([c, n, *(fp(cell) for cell in cells)])
    totals = [summaries[m].neg_total() for m in methods]
    rows.append(["all", max((t.n for t in totals), default=0), *(fp(t) for t in totals)])
    rows.append([
        "max confidence of a false positive", "",
        *(f"{max(t.confidences):.2f}" if t.confidences else "-" for t in totals),
    ])  # fmt: skip
    return markdown_table(headers, rows)


def method_latency_table(
    records_by_method: Mapping[str, Sequence[QueryRecord]], *, server: bool = False
) -> str:
    """p50 / p99 latency per clip length and method (client round trip, or search's own)."""

    def values(recs: Iterable[QueryRecord]) -> list[float]:
        return [
            v
            for r in recs
            if r.error is None and (v := r.server_ms if server else r.latency_ms) is not None
        ]

    methods = list(records_by_method)
    headers = ["clip length"]
    headers += [f"{q} ms {method_tag(m)}" for m in methods for q in ("p50", "p99")]
    lengths = sorted({r.length_s for recs in records_by_method.values() for r in recs})
    rows: list[list[object]] = []
    for x in [*lengths, None]:
        row: list[object] = [_length_header(x) if x is not None else "all"]
        for m in methods:
            lat = values(r for r in records_by_method[m] if x is None or r.length_s == x)
            row += [ms(percentile(lat, 50)), ms(percentile(lat, 99))]
        rows.append(row)
    return markdown_table(headers, rows)


def provenance_table(records_by_method: Mapping[str, Sequence[QueryRecord]]) -> str:
    """Which identifiers found the top match (Match.methods), per method and outcome."""
    found_by = {
        "landmarks only": (LANDMARKS,), "neural only": (NEURAL,), "both": (LANDMARKS, NEURAL),
    }  # fmt: skip
    outcomes: dict[str, Callable[[QueryRecord], bool]] = {
        "hit": is_hit, "wrong track": is_wrong_track, "false positive": is_false_positive,
    }  # fmt: skip
    rows: list[list[object]] = []
    for m, recs in records_by_method.items():
        for label, outcome in outcomes.items():
            answered = [r for r in recs if outcome(r)]
            found = [tuple(sorted(r.match_methods)) for r in answered]
            counts = [found.count(key) for key in found_by.values()]
            rows.append([m, label, len(answered), *counts, len(answered) - sum(counts)])
    return markdown_table(["method", "answer", "answers", *found_by, "not reported"], rows, left=2)


# ---------------------------------------------------------------------- targets


@dataclass(frozen=True)
class TargetRow:
    target: str
    goal: str
    measured: str
    met: bool | None  # None: not measured in this run


def _accuracy_target(
    summary: Summary, label: str, conds: Sequence[str], length: float, goal: float
) -> TargetRow:
    cell = summary.pos(conds, length)
    goal_s = f"top-1 >= {goal:g} % at {length:g} s"
    if not cell.n:
        return TargetRow(label, goal_s, "not measured", None)
    rate = 100 * cell.hit_rate
    return TargetRow(label, goal_s, f"{rate:.1f} % ({cell.hits}/{cell.n})", rate >= goal - 1e-9)


# (label, conditions pooled, clip length s, goal % top-1): issue 3's accuracy targets.
ACCURACY_TARGETS: tuple[tuple[str, tuple[str, ...], float, float], ...] = (
    ("clean", ("clean",), 2, 99),
    ("noise 5 dB, pink", ("pink_5db",), 5, 95),
    ("noise 5 dB, babble", ("babble_5db",), 5, 95),
    ("noise 5 dB, pink", ("pink_5db",), 10, 99),
    ("noise 5 dB, babble", ("babble_5db",), 10, 99),
    ("noise 0 dB, pink", ("pink_0db",), 10, 90),
    ("noise 0 dB, babble", ("babble_0db",), 10, 90),
    ("room (reverb + phone band + 10 dB)", ("room",), 5, 90),
    ("MP3 32 kbps", ("mp3_32k",), 3, 99),
    ("speed +-2 %", ("speed_-2pct", "speed_+2pct"), 5, 95),
    ("speed +-5 %", ("speed_-5pct", "speed_+5pct"), 10, 90),
    ("pitch +-1 semitone", ("pitch_-1st", "pitch_+1st"), 10, 85),
    ("tempo +-5 %", ("tempo_-5pct", "tempo_+5pct"), 10, 85),
)

FP_GOAL_PCT = 0.5
INDEX_GOAL_MB_PER_H = 10.0
EXTRACTION_GOAL_X = 300.0
P50_GOAL_MS = 20.0
P99_GOAL_MS = 100.0


def _threshold_row(
    label: str, goal: str, value: float | None, fmt: str, ok: Callable[[float], bool]
) -> TargetRow:
    if value is None or math.isnan(value):
        return TargetRow(label, goal, "not measured", None)
    return TargetRow(label, goal, fmt.format(value), ok(value))


def target_rows(
    summary: Summary,
    *,
    index_mb_per_hour: float | None = None,
    extraction_x_realtime: float | None = None,
    identify_p50_ms: float | None = None,
    identify_p99_ms: float | None = None,
    latency_note: str = "",
) -> list[TargetRow]:
    rows = [_accuracy_target(summary, *spec) for spec in ACCURACY_TARGETS]
    neg = summary.neg_total()
    if neg.n:
        rate = 100 * neg.fp_rate
        rows.append(
            TargetRow(
                "false positives, out-of-catalog clips",
                f"<= {FP_GOAL_PCT:g} %",
                f"{rate:.2f} % ({neg.false_positives}/{neg.n})",
                rate <= FP_GOAL_PCT,
            )
        )
    else:
        rows.append(TargetRow("false positives", f"<= {FP_GOAL_PCT:g} %", "not measured", None))
    rows.append(
        _threshold_row(
            "index size incl. PostgreSQL indexes", f"<= {INDEX_GOAL_MB_PER_H:g} MB/h",
            index_mb_per_hour, "{:.1f} MB/h", lambda v: v <= INDEX_GOAL_MB_PER_H,
        )
    )  # fmt: skip
    rows.append(
        _threshold_row(
            "hash extraction, one core", f">= {EXTRACTION_GOAL_X:g}x real time",
            extraction_x_realtime, "{:.0f}x", lambda v: v >= EXTRACTION_GOAL_X,
        )
    )  # fmt: skip
    note = f" ({latency_note})" if latency_note else ""
    rows.append(
        _threshold_row(
            "identify p50, 5 s clip", f"<= {P50_GOAL_MS:g} ms server-side",
            identify_p50_ms, "{:.1f} ms" + note, lambda v: v <= P50_GOAL_MS,
        )
    )  # fmt: skip
    rows.append(
        _threshold_row(
            "identify p99, 5 s clip", f"<= {P99_GOAL_MS:g} ms server-side",
            identify_p99_ms, "{:.1f} ms" + note, lambda v: v <= P99_GOAL_MS,
        )
    )  # fmt: skip
    rows.append(
        TargetRow(
            "latency within 1.5x at 10x catalog (1,000 h distractors)",
            "<= 1.5x", "not measured by bench.run", None,
        )
    )  # fmt: skip
    rows.append(TargetRow("audfprint on the same queries", "ratio reported", "not measured", None))
    return rows


def targets_table(rows: Sequence[TargetRow]) -> str:
    def verdict(met: bool | None) -> str:
        return "n/a" if met is None else ("met" if met else "NOT met")

    return markdown_table(
        ["target", "goal", "measured", "verdict"],
        [(r.target, r.goal, r.measured, verdict(r.met)) for r in rows],
        left=4,
    )


# ------------------------------------------------------------- issue-4 targets

# Conditions that are not degraded; every other condition counts as degraded.
UNDEGRADED = frozenset({"clean"})
NEURAL_BEATS_LENGTHS: tuple[float, ...] = (1.0, 2.0)
FUSED_MARGIN_POINTS = 5.0
FUSED_MARGIN_LENGTHS: tuple[float, ...] = (1.0, 2.0, 3.0)
# (label, condition): where fusion must add FUSED_MARGIN_POINTS to landmarks alone.
FUSED_MARGIN_CONDITIONS: tuple[tuple[str, str], ...] = (
    ("room", "room"),
    ("noise 0 dB, pink", "pink_0db"),
    ("noise 0 dB, babble", "babble_0db"),
)
# Failures listed by name in a target row; the rest are counted.
LISTED_FAILURES = 6


def issue3_method(methods: Sequence[str]) -> str | None:
    """The method the issue-3 targets are checked on: landmarks (what the default
    identify ran when those targets were set), else auto, else the first one run."""
    for preferred in (LANDMARKS, AUTO):
        if preferred in methods:
            return preferred
    return methods[0] if methods else None


def _failures(items: Sequence[str]) -> str:
    if not items:
        return ""
    shown = "; ".join(items[:LISTED_FAILURES])
    more = len(items) - LISTED_FAILURES
    return f"; short: {shown}" + (f"; and {more} more" if more > 0 else "")


def _same_cells(
    summaries: Mapping[str, Summary], methods: Sequence[str]
) -> list[tuple[str, float]]:
    """Condition x length cells with positives for every one of `methods`, in table order
    (none when a method was not run)."""
    if any(m not in summaries for m in methods):
        return []
    conditions, lengths = _union_axes({m: summaries[m] for m in methods})
    return [
        (c, x)
        for c in conditions
        for x in lengths
        if all(summaries[m].positives.get((c, x), Cell()).n for m in methods)
    ]


def _rate(summary: Summary, condition: str, length: float) -> float:
    return 100 * summary.pos([condition], length).hit_rate


def _neural_beats_landmarks(summaries: Mapping[str, Summary], length: float) -> TargetRow:
    label = f"neural beats landmarks, every degraded condition, {length:g} s"
    goal = "neural top-1 > landmarks (tie at 100 % counts)"
    both = _same_cells(summaries, (LANDMARKS, NEURAL))
    cells = [c for c, x in both if x == length and c not in UNDEGRADED]
    if not cells:
        return TargetRow(label, goal, "not measured", None)
    short = []
    for c in cells:
        lm, nn = _rate(summaries[LANDMARKS], c, length), _rate(summaries[NEURAL], c, length)
        if not (nn > lm + 1e-9 or min(lm, nn) >= 100 - 1e-9):
            short.append(f"{c} {nn:.1f} vs {lm:.1f}")
    measured = f"{len(cells) - len(short)}/{len(cells)} conditions" + _failures(short)
    return TargetRow(label, goal, measured, not short)


def _fused_at_least_best(summaries: Mapping[str, Summary]) -> TargetRow:
    label = "fused >= the better of landmarks and neural, every cell"
    goal = "fused top-1 >= max(L, N)"
    cells = _same_cells(summaries, (LANDMARKS, NEURAL, FUSED))
    if not cells:
        return TargetRow(label, goal, "not measured", None)
    short = []
    for c, x in cells:
        lm, nn = _rate(summaries[LANDMARKS], c, x), _rate(summaries[NEURAL], c, x)
        fu = _rate(summaries[FUSED], c, x)
        if fu < max(lm, nn) - 1e-9:
            best = NEURAL if nn > lm else LANDMARKS
            short.append(f"{c} {x:g} s {fu:.1f} vs {max(lm, nn):.1f} ({best})")
    measured = f"{len(cells) - len(short)}/{len(cells)} cells" + _failures(short)
    return TargetRow(label, goal, measured, not short)


def _fused_margin(
    summaries: Mapping[str, Summary], label: str, condition: str, length: float
) -> TargetRow:
    target = f"fused vs landmarks, {label}, {length:g} s"
    goal = f"fused top-1 >= landmarks + {FUSED_MARGIN_POINTS:g} points"
    if (condition, length) not in _same_cells(summaries, (LANDMARKS, FUSED)):
        return TargetRow(target, goal, "not measured", None)
    lm, fu = (
        _rate(summaries[LANDMARKS], condition, length),
        _rate(summaries[FUSED], condition, length),
    )
    measured = f"{fu:.1f} % vs {lm:.1f} % ({fu - lm:+.1f})"
    return TargetRow(target, goal, measured, fu - lm >= FUSED_MARGIN_POINTS - 1e-9)


def _fused_false_positives(summaries: Mapping[str, Summary]) -> TargetRow:
    label = "false positives, out-of-catalog clips, fused"
    goal = f"<= {FP_GOAL_PCT:g} %"
    neg = summaries[FUSED].neg_total() if FUSED in summaries else Cell()
    if not neg.n:
        return TargetRow(label, goal, "not measured", None)
    rate = 100 * neg.fp_rate
    return TargetRow(
        label, goal, f"{rate:.2f} % ({neg.false_positives}/{neg.n})", rate <= FP_GOAL_PCT + 1e-9
    )


def method_target_rows(summaries: Mapping[str, Summary]) -> list[TargetRow]:
    """Issue 4's targets, comparing the methods on the same queries; rows whose
    methods were not run read "not measured"."""
    rows = [_neural_beats_landmarks(summaries, x) for x in NEURAL_BEATS_LENGTHS]
    rows.append(_fused_at_least_best(summaries))
    rows += [
        _fused_margin(summaries, label, condition, x)
        for label, condition in FUSED_MARGIN_CONDITIONS
        for x in FUSED_MARGIN_LENGTHS
    ]
    rows.append(_fused_false_positives(summaries))
    return rows
