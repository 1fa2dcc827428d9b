"""bench.rescore joins records of several runs by (query, method)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.rescore import load, render


def _record(query_id: str, method: str, predicted: str | None, negative: bool = False) -> str:
    return json.dumps(
        {
            "query_id": query_id,
            "condition": "clean",
            "length_s": 1.0,
            "negative": negative,
            "track_id": "a",
            "offset_s": 0.0,
            "predicted_track": predicted,
            "predicted_offset_s": 0.0 if predicted else None,
            "method": method,
        }
    )


def test_a_later_file_replaces_a_method_and_keeps_the_others(tmp_path: Path) -> None:
    first, second = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    first.write_text(
        "\n".join(
            [
                _record("q1", "landmarks", "a"),
                _record("q1", "fused", None),
                _record("n1", "fused", "a", negative=True),
            ]
        )
    )
    second.write_text(
        "\n".join([_record("q1", "fused", "a"), _record("n1", "fused", None, negative=True)])
    )
    records = {(r.query_id, r.method): r for r in load([first, second])}
    assert set(records) == {("q1", "landmarks"), ("q1", "fused"), ("n1", "fused")}
    assert records[("q1", "fused")].predicted_track == "a"
    assert records[("n1", "fused")].predicted_track is None
    text = render(list(records.values()))
    assert "0.00 % (0/1)" in text  # the second run's fused false positives
