"""Scoring rules of the benchmark (bench/report.py) on hand-made records, no stack."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import report
from bench.report import QueryRecord


def rec(**kw: object) -> QueryRecord:
    base: dict[str, object] = {
        "query_id": "q",
        "condition": "clean",
        "length_s": 5.0,
        "negative": False,
        "track_id": "pkg/a.ogg",
        "offset_s": 100.0,
    }
    base.update(kw)
    return QueryRecord(**base)  # type: ignore[arg-type]


def test_hit_needs_the_right_track() -> None:
    assert report.is_hit(rec(predicted_track="pkg/a.ogg", predicted_offset_s=0.0))
    assert not report.is_hit(rec(predicted_track="pkg/b.ogg"))
    assert not report.is_hit(rec(predicted_track=None))
    wrong = rec(predicted_track="pkg/b.ogg")
    assert report.is_wrong_track(wrong) and not report.is_false_positive(wrong)
    assert not report.is_wrong_track(rec(predicted_track=None))


@pytest.mark.parametrize(
    ("predicted", "ok"),
    [(100.0, True), (100.5, True), (99.5, True), (100.51, False), (99.4, False), (None, False)],
)
def test_offset_within_half_a_second(predicted: float | None, ok: bool) -> None:
    r = rec(predicted_track="pkg/a.ogg", predicted_offset_s=predicted)
    assert report.is_offset_right(r) is ok


def test_offset_right_requires_a_hit() -> None:
    assert not report.is_offset_right(rec(predicted_track="pkg/b.ogg", predicted_offset_s=100.0))


def test_speed_changed_query_is_scored_at_its_start_in_the_original() -> None:
    # 5 % faster: query time t is original time offset_s + 1.05 t, so the
    # query's start is still at offset_s; offset_s / speed would be wrong.
    r = rec(speed=1.05, condition="speed_+5pct", length_s=10.0, predicted_track="pkg/a.ogg")
    assert report.truth_offset_s(r) == 100.0
    assert report.truth_offset_s(r, 10.0) == pytest.approx(110.5)
    assert report.is_offset_right(report_replace(r, predicted_offset_s=100.2))
    assert not report.is_offset_right(report_replace(r, predicted_offset_s=100.0 / 1.05))
    slow = rec(speed=0.95, predicted_track="pkg/a.ogg", predicted_offset_s=99.7)
    assert report.is_offset_right(slow)


def report_replace(r: QueryRecord, **kw: object) -> QueryRecord:
    return QueryRecord(**{**r.to_json(), **kw})


@pytest.mark.parametrize(
    ("predicted", "ok"),
    [
        (100.0 + 152.0, True),  # one period later
        (100.0 - 152.0 + 0.4, True),  # one period earlier, within tolerance
        (100.0 + 3 * 152.0 - 0.5, True),
        (100.0 + 76.0, False),  # half a period: a different place in the loop
        (100.0 + 152.0 + 0.6, False),
    ],
)
def test_loop_period_equivalence(predicted: float, ok: bool) -> None:
    r = rec(loop_period_s=152.0, predicted_track="pkg/a.ogg", predicted_offset_s=predicted)
    assert report.is_offset_right(r) is ok
    # Without the loop period the same answers are wrong (except the exact one).
    plain = report_replace(r, loop_period_s=None)
    assert not report.is_offset_right(plain)


def test_offset_error_wraps_both_ways() -> None:
    assert report.offset_error_s(10.1, 129.9, 120.0) == pytest.approx(0.2)
    assert report.offset_error_s(129.9, 10.1, 120.0) == pytest.approx(0.2)
    assert report.offset_error_s(5.0, 3.0) == 2.0


def test_false_positives_count_only_negatives_with_a_match() -> None:
    recs = [
        rec(negative=True, predicted_track=None),
        rec(negative=True, predicted_track="pkg/b.ogg", confidence=0.3),
        rec(negative=True, predicted_track=None, condition="pink_5db"),
        rec(negative=True, predicted_track=None, error="UNAVAILABLE: x"),
        rec(predicted_track="pkg/b.ogg"),  # wrong track on a positive: not an FP
    ]
    assert [report.is_false_positive(r) for r in recs] == [False, True, False, False, False]
    # A negative whose track_id happens to equal the answer is still no hit.
    assert not report.is_hit(rec(negative=True, predicted_track="pkg/a.ogg"))
    s = report.summarize(recs)
    total = s.neg_total()
    assert (total.n, total.false_positives) == (4, 1)
    assert total.fp_rate == pytest.approx(0.25)
    assert s.neg_total("pink_5db").false_positives == 0
    assert "0.30" in report.negatives_table(s)


def test_summary_grid_and_targets() -> None:
    recs = [
        rec(condition="clean", length_s=2.0, predicted_track="pkg/a.ogg", predicted_offset_s=100),
        rec(condition="clean", length_s=2.0, predicted_track="pkg/a.ogg", predicted_offset_s=90),
        rec(condition="clean", length_s=2.0, predicted_track=None),
        rec(condition="clean", length_s=2.0, predicted_track="pkg/z.ogg"),
        rec(condition="speed_-2pct", length_s=5.0, predicted_track="pkg/a.ogg"),
        rec(condition="speed_+2pct", length_s=5.0, predicted_track=None),
        rec(negative=True, length_s=2.0, predicted_track=None),
    ]
    s = report.summarize(recs)
    cell = s.positives[("clean", 2.0)]
    assert (cell.n, cell.hits, cell.offset_right, cell.wrong_track) == (4, 2, 1, 1)
    assert cell.hit_rate == 0.5 and cell.offset_rate == 0.25
    assert s.pos(["speed_-2pct", "speed_+2pct"], 5.0).hit_rate == 0.5
    hit = report.hit_table(s)
    assert "| clean" in hit and "50.0" in hit

    rows = {(r.target, r.goal): r for r in report.target_rows(s, index_mb_per_hour=12.0)}
    clean = rows[("clean", "top-1 >= 99 % at 2 s")]
    assert clean.met is False and clean.measured.startswith("50.0 % (2/4)")
    speed = rows[("speed +-2 %", "top-1 >= 95 % at 5 s")]
    assert speed.measured.startswith("50.0 % (1/2)")
    assert rows[("room (reverb + phone band + 10 dB)", "top-1 >= 90 % at 5 s")].met is None
    fp = rows[("false positives, out-of-catalog clips", "<= 0.5 %")]
    assert fp.met is True and "0/1" in fp.measured
    assert rows[("index size incl. PostgreSQL indexes", "<= 10 MB/h")].met is False
    assert rows[("hash extraction, one core", ">= 300x real time")].met is None
    assert "NOT met" in report.targets_table(list(rows.values()))


def test_percentile_and_tables_handle_empty_input() -> None:
    assert math.isnan(report.percentile([], 50))
    assert report.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert report.percentile([5.0], 99) == 5.0
    table = report.markdown_table(["a", "b"], [["x", 1], ["yy", 22]])
    assert table.splitlines()[1] == "| -- | -: |"
    assert report.latency_table([rec(latency_ms=3.0), rec(latency_ms=5.0)]).count("4.0") == 2


def test_records_round_trip_through_json() -> None:
    r = rec(predicted_track="pkg/a.ogg", predicted_offset_s=1.5, confidence=0.9, latency_ms=7.0)
    assert QueryRecord.from_json(r.to_json()) == r


def test_server_latency_table_skips_records_without_it() -> None:
    recs = [rec(latency_ms=9.0, server_ms=4.0), rec(latency_ms=9.0), rec(server_ms=6.0)]
    table = report.latency_table(recs, server=True)
    assert "| 5 s         |       2 |" in table and "5.0" in table


def test_answered_record_keeps_the_query_truth() -> None:
    from types import SimpleNamespace

    q = SimpleNamespace(
        query_id="q1", condition="speed_+2pct", length_s=5.0, negative=False,
        track_id="pkg/a.ogg", offset_s=12.5, speed=1.02, loop_period_s=None,
    )  # fmt: skip
    rec = QueryRecord.answered(q, predicted_track="pkg/a.ogg", predicted_offset_s=12.4)
    truth = (rec.query_id, rec.condition, rec.speed, rec.offset_s)
    assert truth == ("q1", "speed_+2pct", 1.02, 12.5)
    assert rec.predicted_track == "pkg/a.ogg" and rec.predicted_offset_s == 12.4
    assert rec.error is None


def test_condition_latency_table_puts_out_of_catalog_clips_in_their_own_row() -> None:
    recs = [
        rec(condition="clean", server_ms=10.0),
        rec(condition="clean", server_ms=20.0),
        rec(condition="speed_+2pct", server_ms=40.0),
        rec(condition="clean", negative=True, server_ms=50.0),
        rec(condition="clean", length_s=1.0, server_ms=99.0),  # another length
        rec(condition="room", server_ms=30.0, error="UNAVAILABLE"),
    ]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in report.condition_latency_table(recs, 5.0).splitlines()[2:]
    }
    assert list(rows) == ["clean", "speed_+2pct", "out-of-catalog", "all"]
    assert rows["clean"][:2] == ["2", "15.0"]
    assert rows["out-of-catalog"][:2] == ["1", "50.0"]
    assert rows["all"][:2] == ["4", "30.0"]
