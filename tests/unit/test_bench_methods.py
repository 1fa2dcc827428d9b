"""The benchmark's per-method aggregation and issue-4 targets (bench/report.py) on
hand-made records, no stack."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import report
from bench.report import FUSED, LANDMARKS, NEURAL, QueryRecord

TRACK = "pkg/a.ogg"


def batch(
    method: str,
    condition: str,
    length_s: float,
    hits: int,
    n: int = 10,
    *,
    wrong: int = 0,
    negative: bool = False,
    found_by: tuple[str, ...] = (),
) -> list[QueryRecord]:
    """`n` queries of one cell answered by `method`: `hits` right, `wrong` wrong tracks,
    the rest unanswered. For negatives, `hits` is the number of false positives."""
    out = []
    for i in range(n):
        answer = TRACK if i < hits else ("pkg/other.ogg" if i < hits + wrong else None)
        out.append(
            QueryRecord(
                query_id=f"{condition}-{length_s:g}-{'neg' if negative else 'pos'}-{i}",
                condition=condition,
                length_s=length_s,
                negative=negative,
                track_id=TRACK,
                offset_s=10.0,
                predicted_track=answer,
                predicted_offset_s=10.0 if answer else None,
                confidence=0.5 + i / 100 if answer else None,
                latency_ms=float(i + 1),
                method=method,
                match_methods=found_by if answer else (),
            )
        )
    return out


def table_rows(table: str) -> dict[str, dict[str, str]]:
    """A markdown table as {first cell: {header: cell}}."""
    lines = table.splitlines()
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(headers, cells, strict=True))
    return rows


def rows_by_target(rows: list[report.TargetRow]) -> dict[str, report.TargetRow]:
    return {r.target: r for r in rows}


# ------------------------------------------------------------------- records


def test_old_records_without_a_method_read_as_auto() -> None:
    old = {
        "query_id": "q", "condition": "clean", "length_s": 5.0, "negative": False,
        "track_id": TRACK, "offset_s": 1.0, "predicted_track": TRACK,
    }  # fmt: skip
    rec = QueryRecord.from_json(old)
    assert rec.method == report.AUTO
    assert rec.match_methods == ()


def test_method_and_match_methods_survive_json() -> None:
    rec = batch(FUSED, "room", 1.0, 1, 1, found_by=(LANDMARKS, NEURAL))[0]
    back = QueryRecord.from_json(json.loads(json.dumps(rec.to_json())))
    assert back == rec
    assert back.match_methods == (LANDMARKS, NEURAL)


def test_records_group_by_method_in_a_fixed_method_order() -> None:
    recs = (
        batch("experimental", "clean", 1.0, 0, 1)
        + batch(FUSED, "clean", 1.0, 0, 1)
        + batch(NEURAL, "clean", 1.0, 3, 4)
        + batch(LANDMARKS, "clean", 1.0, 1, 2)
    )
    recs.insert(1, batch(LANDMARKS, "room", 1.0, 0, 1)[0])
    grouped = report.by_method(recs)
    assert list(grouped) == [LANDMARKS, NEURAL, FUSED, "experimental"]
    assert [len(v) for v in grouped.values()] == [3, 4, 1, 1]
    assert [r.condition for r in grouped[LANDMARKS]] == ["room", "clean", "clean"]
    summaries = report.summarize_methods(recs)
    assert summaries[NEURAL].pos(["clean"], 1.0).hits == 3
    assert summaries[LANDMARKS].pos(["clean"], 1.0).n == 2


@pytest.mark.parametrize(
    ("methods", "chosen"),
    [
        ([NEURAL, LANDMARKS, FUSED], LANDMARKS),
        ([FUSED, report.AUTO], report.AUTO),
        ([NEURAL, FUSED], NEURAL),
        ([], None),
    ],
)
def test_issue3_targets_use_landmarks_first(methods: list[str], chosen: str | None) -> None:
    assert report.issue3_method(methods) == chosen


# -------------------------------------------------------------------- tables


def test_hit_table_has_a_column_per_method_and_length() -> None:
    recs = (
        batch(LANDMARKS, "room", 1.0, 2)
        + batch(NEURAL, "room", 1.0, 6)
        + batch(FUSED, "room", 1.0, 7)
        + batch(LANDMARKS, "room", 2.0, 5)
        + batch(NEURAL, "room", 2.0, 8)
        + batch(FUSED, "room", 2.0, 9)
    )
    rows = table_rows(report.method_hit_table(report.summarize_methods(recs)))
    room = rows["room"]
    assert (room["1 s L"], room["1 s N"], room["1 s F"]) == ("20.0", "60.0", "70.0")
    assert (room["2 s L"], room["2 s N"], room["2 s F"]) == ("50.0", "80.0", "90.0")
    assert (room["all L"], room["all N"], room["all F"]) == ("35.0", "70.0", "80.0")
    assert rows["all conditions"]["2 s F"] == "90.0"


def test_a_method_missing_a_cell_shows_a_dash() -> None:
    recs = batch(LANDMARKS, "room", 1.0, 2) + batch(NEURAL, "clean", 1.0, 6)
    rows = table_rows(report.method_hit_table(report.summarize_methods(recs)))
    assert rows["room"]["1 s N"] == "-"
    assert rows["clean"]["1 s L"] == "-"
    assert rows["clean"]["1 s N"] == "60.0"


def test_errors_table_splits_no_match_and_wrong_track_per_method() -> None:
    recs = batch(LANDMARKS, "room", 1.0, 2, wrong=3) + batch(NEURAL, "room", 1.0, 9, wrong=1)
    row = table_rows(report.method_errors_table(report.summarize_methods(recs)))["room"]
    assert (row["no match % L"], row["wrong track % L"]) == ("50.0", "30.0")
    assert (row["no match % N"], row["wrong track % N"]) == ("0.0", "10.0")


def test_false_positives_per_method() -> None:
    recs = (
        batch(LANDMARKS, "clean", 1.0, 0, 200, negative=True)
        + batch(FUSED, "clean", 1.0, 3, 200, negative=True)
        + batch(FUSED, "room", 1.0, 1, 100, negative=True)
    )
    rows = table_rows(report.method_negatives_table(report.summarize_methods(recs)))
    assert rows["clean"]["false pos. L"] == "0 (0.00 %)"
    assert rows["clean"]["false pos. F"] == "3 (1.50 %)"
    assert rows["all"]["false pos. F"] == "4 (1.33 %)"
    assert rows["max confidence of a false positive"]["false pos. F"] == "0.52"
    assert rows["max confidence of a false positive"]["false pos. L"] == "-"


def test_latency_table_per_method_and_length() -> None:
    recs = batch(LANDMARKS, "clean", 1.0, 0, 3) + batch(NEURAL, "clean", 1.0, 0, 5)
    rows = table_rows(report.method_latency_table(report.by_method(recs)))
    assert rows["1 s"]["p50 ms L"] == "2.0"
    assert rows["1 s"]["p50 ms N"] == "3.0"
    assert rows["all"]["p99 ms N"] == "5.0"


def test_provenance_counts_which_identifiers_found_the_answer() -> None:
    recs = (
        batch(FUSED, "room", 1.0, 4, 4, found_by=(NEURAL, LANDMARKS))
        + batch(FUSED, "clean", 1.0, 2, 2, found_by=(NEURAL,))
        + batch(FUSED, "clean", 1.0, 1, 1, negative=True, found_by=(LANDMARKS,))
    )
    cells = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in report.provenance_table(report.by_method(recs)).splitlines()[2:]
    ]
    by_outcome = {(row[0], row[1]): row[2:] for row in cells}
    # answers, landmarks only, neural only, both, not reported
    assert by_outcome[(FUSED, "hit")] == ["6", "0", "2", "4", "0"]
    assert by_outcome[(FUSED, "false positive")] == ["1", "1", "0", "0", "0"]
    assert by_outcome[(FUSED, "wrong track")] == ["0", "0", "0", "0", "0"]


# ------------------------------------------------------------ issue-4 targets


def three_methods(cells: dict[tuple[str, float], tuple[int, int, int]]) -> list[QueryRecord]:
    """Records with (landmarks, neural, fused) hits out of 10 per (condition, length)."""
    recs: list[QueryRecord] = []
    for (condition, length), hits in cells.items():
        for method, h in zip((LANDMARKS, NEURAL, FUSED), hits, strict=True):
            recs += batch(method, condition, length, h)
    return recs


def test_neural_must_beat_landmarks_in_every_degraded_condition() -> None:
    recs = three_methods({
        ("clean", 1.0): (10, 9, 10),  # not degraded: neural may lose here
        ("room", 1.0): (2, 6, 6),
        ("pink_0db", 1.0): (3, 5, 5),
        ("room", 2.0): (5, 8, 8),
        ("pink_0db", 2.0): (7, 7, 7),  # a tie below 100 % is not a win
    })  # fmt: skip
    rows = rows_by_target(report.method_target_rows(report.summarize_methods(recs)))
    one = rows["neural beats landmarks, every degraded condition, 1 s"]
    assert one.met is True and one.measured.startswith("2/2 conditions")
    two = rows["neural beats landmarks, every degraded condition, 2 s"]
    assert two.met is False
    assert "1/2 conditions" in two.measured and "pink_0db 70.0 vs 70.0" in two.measured


def test_a_tie_at_100_percent_counts_as_beating() -> None:
    recs = three_methods({("mp3_32k", 1.0): (10, 10, 10), ("room", 1.0): (1, 4, 4)})
    rows = rows_by_target(report.method_target_rows(report.summarize_methods(recs)))
    assert rows["neural beats landmarks, every degraded condition, 1 s"].met is True


def test_fused_must_match_the_better_method_in_every_cell() -> None:
    recs = three_methods({
        ("clean", 1.0): (10, 9, 10),
        ("room", 1.0): (2, 6, 5),  # fused below neural
        ("room", 3.0): (8, 6, 8),
    })  # fmt: skip
    row = rows_by_target(report.method_target_rows(report.summarize_methods(recs)))[
        "fused >= the better of landmarks and neural, every cell"
    ]
    assert row.met is False
    assert row.measured.startswith("2/3 cells")
    assert "room 1 s 50.0 vs 60.0 (neural)" in row.measured


def test_fused_margin_over_landmarks_per_condition_and_length() -> None:
    recs = three_methods({
        ("room", 1.0): (2, 6, 7),  # +50 points
        ("room", 2.0): (6, 6, 6),  # +0
        ("babble_0db", 3.0): (5, 5, 5),
    })  # fmt: skip
    recs += batch(LANDMARKS, "pink_0db", 1.0, 5, 20) + batch(FUSED, "pink_0db", 1.0, 6, 20)
    rows = rows_by_target(report.method_target_rows(report.summarize_methods(recs)))
    assert rows["fused vs landmarks, room, 1 s"].met is True
    assert rows["fused vs landmarks, room, 1 s"].measured == "70.0 % vs 20.0 % (+50.0)"
    assert rows["fused vs landmarks, room, 2 s"].met is False
    assert rows["fused vs landmarks, noise 0 dB, babble, 3 s"].met is False
    # Exactly 5 points (30 % vs 25 %) meets the goal.
    assert rows["fused vs landmarks, noise 0 dB, pink, 1 s"].met is True
    assert rows["fused vs landmarks, room, 3 s"].met is None  # not in this run


def test_fused_false_positive_goal() -> None:
    ok = batch(FUSED, "clean", 1.0, 1, 200, negative=True)  # 0.5 %
    too_many = batch(FUSED, "clean", 1.0, 2, 200, negative=True)  # 1 %
    target = "false positives, out-of-catalog clips, fused"
    met = rows_by_target(report.method_target_rows(report.summarize_methods(ok)))[target]
    assert met.met is True and met.measured == "0.50 % (1/200)"
    missed = rows_by_target(report.method_target_rows(report.summarize_methods(too_many)))
    assert missed[target].met is False


def test_targets_of_methods_not_run_are_not_measured() -> None:
    recs = batch(LANDMARKS, "room", 1.0, 5) + batch(LANDMARKS, "clean", 1.0, 5, negative=True)
    rows = report.method_target_rows(report.summarize_methods(recs))
    assert rows and all(r.met is None and r.measured == "not measured" for r in rows)
