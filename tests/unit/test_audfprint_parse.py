"""bench.audfprint_compare: reading audfprint's output and scoring it like bench.run.

The lines below were captured from real runs of audfprint (dpwe/audfprint at
cb03ba9, default parameters) by `python -m bench.audfprint_compare`; audfprint
itself is not needed here.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import audfprint_compare as ac
from bench import report
from bench.degrade import Query

MATCHED = (
    "Matched /tmp/audfprint-work-small/queries/pos-000003.wav 4.9 sec 152 raw hashes as "
    "/tmp/audfprint-work-small/catalog/ref00027.wav at   18.7 s with    28 of    96 common "
    "hashes at rank  0"
)
NOMATCH = "NOMATCH /tmp/audfprint-work-small/queries/pos-000004.wav 4.9 sec 472 raw hashes"
HEADER = "Mon Nov 23 16:29:45 2026 Reading hash table /tmp/audfprint-work-small/fpdbase.pklz"
SAVED = (
    "Saved fprints for 56 files ( 323205 hashes) to /tmp/audfprint-work-small/fpdbase.pklz "
    "(0.75% dropped)"
)
# The best alignment can put the query's start before the reference's: a
# negative offset (a 10 s babble_10db clip of hyperrogue's hr3-mirror).
NEGATIVE = (
    "Matched /tmp/audfprint-bench-7fzyhtvw/queries/pos-002792.wav 9.5 sec 503 raw hashes as "
    "/tmp/audfprint-bench-7fzyhtvw/catalog/ref00032.wav at   -7.2 s with    15 of    35 "
    "common hashes at rank  0"
)

QUERY = Query(
    query_id="pos-000003",
    track_path=Path("hr3-caves.ogg"),
    track_id="hyperrogue-music/usr/share/hyperrogue/music/hr3-caves.ogg",
    package="hyperrogue-music",
    condition="clean",
    length_s=5.0,
    offset_s=18.7211875,
    speed=1.0,
    pitch_semitones=0.0,
    snr_db=None,
    loop_period_s=None,
    negative=False,
    sr=16000,
    audio=np.zeros(0, dtype=np.float32),
)
REFS = {
    "/tmp/audfprint-work-small/catalog/ref00027.wav": QUERY.track_id,
}


def test_a_match_line_gives_reference_offset_and_counts() -> None:
    ans = ac.parse_match_line(MATCHED)
    assert ans == ac.AudfprintAnswer(
        query_path="/tmp/audfprint-work-small/queries/pos-000003.wav",
        ref_path="/tmp/audfprint-work-small/catalog/ref00027.wav",
        offset_s=18.7,
        aligned_hashes=28,
        common_hashes=96,
        query_hashes=152,
    )


def test_a_negative_offset_is_read_with_its_sign() -> None:
    ans = ac.parse_match_line(NEGATIVE)
    assert ans is not None and ans.offset_s == pytest.approx(-7.2)
    assert ans.ref_path == "/tmp/audfprint-bench-7fzyhtvw/catalog/ref00032.wav"
    assert (ans.aligned_hashes, ans.common_hashes, ans.query_hashes) == (15, 35, 503)


def test_nomatch_line_is_an_answer_without_reference() -> None:
    ans = ac.parse_match_line(NOMATCH + "\n")
    assert ans is not None
    assert ans.query_path == "/tmp/audfprint-work-small/queries/pos-000004.wav"
    assert ans.ref_path is None and ans.offset_s is None
    assert ans.query_hashes == 472


def test_other_lines_are_not_answers() -> None:
    assert ac.parse_match_line(HEADER) is None
    assert ac.parse_match_line(SAVED) is None
    assert ac.parse_match_line("") is None


def test_output_is_keyed_by_query_and_the_first_answer_wins() -> None:
    second = MATCHED.replace("ref00027", "ref00001").replace("28 of", "9 of")
    answers = ac.parse_match_output([HEADER, MATCHED, second, NOMATCH])
    assert set(answers) == {
        "/tmp/audfprint-work-small/queries/pos-000003.wav",
        "/tmp/audfprint-work-small/queries/pos-000004.wav",
    }
    assert answers["/tmp/audfprint-work-small/queries/pos-000003.wav"].aligned_hashes == 28


def test_saved_line_gives_hashes_and_dropped_share() -> None:
    assert ac.parse_saved_line([HEADER, SAVED]) == (323205, 0.75)
    assert ac.parse_saved_line([HEADER]) is None


def test_a_match_becomes_a_hit_with_the_right_offset() -> None:
    rec = ac.to_record(QUERY, ac.parse_match_line(MATCHED), REFS, latency_ms=40.0)
    assert rec.predicted_track == QUERY.track_id
    assert report.is_hit(rec) and report.is_offset_right(rec)
    assert rec.score == 28 and rec.latency_ms == 40.0


def test_nomatch_and_missing_lines_are_no_answer() -> None:
    none = ac.to_record(QUERY, ac.parse_match_line(NOMATCH), REFS, latency_ms=1.0)
    assert none.predicted_track is None and none.error is None
    missing = ac.to_record(QUERY, None, REFS, latency_ms=1.0)
    assert missing.predicted_track is None and missing.error is not None
    assert not report.is_hit(missing)


def test_an_unknown_reference_is_a_wrong_track() -> None:
    rec = ac.to_record(QUERY, ac.parse_match_line(MATCHED), {}, latency_ms=1.0)
    assert report.is_wrong_track(rec)


def test_offsets_past_the_time_wrap_are_right_only_modulo_it() -> None:
    wrap_s = ac.AUDFPRINT_MAXTIME_FRAMES * ac.AUDFPRINT_HOP_S
    assert wrap_s == pytest.approx(380.43, abs=0.01)
    late = replace(QUERY, offset_s=400.0)
    reported = ac.parse_match_line(MATCHED.replace("at   18.7 s", f"at {400.0 - wrap_s:6.1f} s"))
    rec = ac.to_record(late, reported, REFS, latency_ms=1.0)
    assert report.is_hit(rec) and not report.is_offset_right(rec)
    assert ac.offset_right_modulo(rec, wrap_s)
    assert not ac.offset_right_modulo(rec, wrap_s + 5.0)


def test_time_wrap_and_table_size_follow_the_options() -> None:
    assert ac.maxtime_frames([]) == 16384
    assert ac.maxtime_frames(["--maxtimebits", "16"]) == 65536
    assert ac.maxtime_frames(["--maxtime=32768"]) == 32768
    assert ac.maxtime_frames(["-u", "15", "--maxtime", "1024"]) == 32768
    assert ac.table_bytes([]) == (1 << 20) * 100 * 4
    assert ac.table_bytes(["--hashbits", "18", "--bucketsize=50"]) == (1 << 18) * 50 * 4


def test_earmark_index_and_ingest_come_from_its_report() -> None:
    text = "\n".join([
        "| ingest speed, end to end                  | 70x real time |",
        "| landmarks                              | 158.6 |       38.30 |",
        "| total                                  | 170.6 |       41.21 |",
    ])  # fmt: skip
    assert ac.earmark_facts(text) == {"index_mb_per_hour": 41.21, "ingest_x_realtime": 70.0}
    assert ac.earmark_facts("no tables here") == {}


def test_records_pair_by_what_the_query_is_not_its_id() -> None:
    base = report.QueryRecord.answered(QUERY, latency_ms=1.0)
    earmark = [
        report.QueryRecord(**{**base.to_json(), "query_id": "pos-009999"}),
        report.QueryRecord(**{**base.to_json(), "query_id": "pos-000001", "offset_s": 3.0}),
    ]
    e, a = ac.paired(earmark, [base])
    assert [r.query_id for r in e] == ["pos-009999"] and a == [base]


def test_earmark_records_of_the_landmarks_method(tmp_path: Path) -> None:
    row = report.QueryRecord.answered(QUERY, latency_ms=1.0).to_json()
    row.pop("method", None)
    path = tmp_path / "records.jsonl"

    def load(*rows: dict[str, object]) -> tuple[list[str], str | None]:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        recs, method = ac.load_earmark_records(path)
        return [r.query_id for r in recs], method

    old = {**row, "query_id": "a"}  # written before records had a method
    lm = {**row, "query_id": "b", "method": "landmarks"}
    nn = {**row, "query_id": "c", "method": "neural"}
    assert load(old, lm, nn) == (["b"], "landmarks")
    assert load(old, {**old, "query_id": "d"}) == (["a", "d"], "auto")
    assert load(nn) == (["c"], "neural")


def _figures() -> tuple[ac.IngestFigures, ac.MatchFigures, ac.Context]:
    ingest = ac.IngestFigures(
        tracks=2, audio_s=3600.0, wall_s=10.0, cpu_s=8.0, db_bytes=500_000, hashes=80_000,
        dropped_pct=0.0, decode_wall_s=20.0, decode_cpu_s=15.0,
    )  # fmt: skip
    match = ac.MatchFigures(
        load=ac.Timed(3.0, 2.0, 0), batches=[ac.MatchBatch(5.0, 2, wall_s=3.2, cpu_s=2.1)]
    )
    ctx = ac.Context(
        argv=["--limit", "1"], audfprint="cb03ba9", extra_args=(), ncores=1, corpus_tracks=3,
        catalog_tracks=2, held_out_tracks=1, query_tracks=(1, 1), wall_s=60.0,
    )  # fmt: skip
    return ingest, match, ctx


def test_figures_per_query_and_per_hour() -> None:
    ingest, match, _ = _figures()
    assert ingest.mb_per_hour == pytest.approx(0.5)
    assert ingest.x_realtime == pytest.approx(360.0)
    assert ingest.x_realtime_with_decode == pytest.approx(120.0)  # 3600 s / (10 + 20 s)
    # (3.2 s - 3.0 s of start-up) over 2 queries
    assert match.per_query_ms(match.batches[0]) == pytest.approx(100.0)
    assert match.per_query_ms(match.batches[0], cpu=True) == pytest.approx(50.0)


def test_report_compares_both_on_the_same_queries(tmp_path: Path) -> None:
    ingest, match, ctx = _figures()
    audfprint = [
        ac.to_record(QUERY, ac.parse_match_line(MATCHED), REFS, latency_ms=100.0),
        ac.to_record(replace(QUERY, query_id="pos-000004", condition="pink_5db"),
                     ac.parse_match_line(NOMATCH), REFS, latency_ms=100.0),
    ]  # fmt: skip
    earmark = [
        replace(r, query_id=f"e{i}", predicted_track=QUERY.track_id,
                predicted_offset_s=QUERY.offset_s, latency_ms=40.0)
        for i, r in enumerate(audfprint)
    ]  # fmt: skip
    facts = {"index_mb_per_hour": 41.21, "ingest_x_realtime": 70.0}
    ac.save_run(tmp_path, audfprint, ingest, match, ctx)
    assert ac.load_run(tmp_path) == (audfprint, ingest, match, ctx)
    text = ac.render(audfprint, ingest, match, ctx, earmark, facts)
    assert "on the same 2 queries" in text
    # Top-1, then offset accuracy: Earmark / audfprint per cell.
    assert rows(text, "pink_5db") == [["pink_5db", "100.0 / 0.0", "100.0 / 0.0"]] * 2
    assert rows(text, "clean")[:2] == [["clean", "100.0 / 100.0", "100.0 / 100.0"]] * 2
    assert rows(text, "index, MB per hour of audio") == [
        ["index, MB per hour of audio", "41.21", "0.50", "0.01"]
    ]
    assert rows(text, "time per query, 5 s clips, mean ms") == [
        ["time per query, 5 s clips, mean ms", "40.0", "100.0", "2.50"]
    ]


def rows(text: str, label: str) -> list[list[str]]:
    """Cells of the markdown rows labelled ``label`` that compare two values."""
    out = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == label and (" / " in line or len(cells) == 4):
            out.append(cells)
    return out
